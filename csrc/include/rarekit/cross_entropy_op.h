// Argument checks and preparation shared by the CPU and CUDA cross-entropy operators. Every
// argument's shape, dtype and device is checked here, before any kernel touches memory.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "rarekit/cross_entropy_math.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

struct CrossEntropyInputs {
  at::Tensor logits;        // (rows, classes), contiguous
  at::Tensor target;        // (rows,) int64
  at::Tensor weight;        // (classes,) in the accumulator dtype, or undefined
  at::Tensor adjust;        // (classes,) in the accumulator dtype, or undefined
  at::Tensor margin;        // (classes,) target_margin in the accumulator dtype, or undefined
  at::Tensor weight_total;  // () Σ w in the accumulator dtype, computed on the device (CUDA only), or undefined
  CrossEntropyConfig config;
};

// float64 for float64 logits, float32 for float32, bfloat16 and float16 logits: the dtype of the
// per-row losses, the row terms, and the class vectors as the kernels read them.
inline at::ScalarType accumulator_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A per-class vector (weight, logit_adjustment, target_margin, bias): floating point, (classes,), on `device`.
// `op` names the operator in the messages.
inline void check_class_vector(const std::optional<at::Tensor>& vector, const char* name, int64_t classes,
                               const at::Device& device, const char* op) {
  if (!vector) return;
  TORCH_CHECK_VALUE(vector->dim() == 1 && vector->size(0) == classes, op, ": ", name, " must have shape (", classes,
                    ",), got ", vector->sizes());
  TORCH_CHECK_VALUE(vector->device() == device, op, ": ", name, " is on ", vector->device(), " but the inputs are on ",
                    device);
  TORCH_CHECK_TYPE(vector->is_floating_point(), op, ": ", name, " must be floating point, got ",
                   vector->scalar_type());
}

// Class-index targets: integer, (rows,), on `device`.
inline void check_class_targets(const at::Tensor& target, int64_t rows, const at::Device& device, const char* op) {
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == rows, op, ": target must have shape (", rows, ",), got ",
                    target.sizes());
  TORCH_CHECK_VALUE(target.device() == device, op, ": target is on ", target.device(), " but the inputs are on ",
                    device);
  TORCH_CHECK_TYPE(!at::isFloatingType(target.scalar_type()) && !at::isComplexType(target.scalar_type()) &&
                       target.scalar_type() != at::kBool,
                   op, ": target must hold integer class indices, got ", target.scalar_type());
}

// `tensor` as a contiguous tensor of `type`: itself when it already is one, without the dispatcher call of
// a no-op .to() (a few of them add up against the ~3 us kernel call of a 64 x 2 loss).
inline at::Tensor contiguous_as(const at::Tensor& tensor, at::ScalarType type) {
  return tensor.scalar_type() == type ? tensor.contiguous() : tensor.to(type).contiguous();
}

inline at::Tensor class_vector(const std::optional<at::Tensor>& vector, const char* name, const at::Tensor& logits) {
  check_class_vector(vector, name, logits.size(1), logits.device(), "rarekit.cross_entropy");
  return vector ? contiguous_as(*vector, accumulator_type(logits)) : at::Tensor();
}

// A per-row tensor the kernels read, of `shape`, on the logits' device, returned in the accumulator
// dtype: any floating dtype is converted (upstream gradients), or, with exact_dtype (the row terms
// the forward saved), only the accumulator dtype is accepted.
inline at::Tensor row_vector(const at::Tensor& tensor, const char* name, at::IntArrayRef shape,
                             const at::Tensor& logits, bool exact_dtype = false) {
  TORCH_CHECK_VALUE(tensor.sizes() == shape, "rarekit.cross_entropy: ", name, " must have shape ", shape, ", got ",
                    tensor.sizes());
  TORCH_CHECK_VALUE(tensor.device() == logits.device(), "rarekit.cross_entropy: ", name, " is on ", tensor.device(),
                    " but logits are on ", logits.device());
  const at::ScalarType expected = accumulator_type(logits);
  TORCH_CHECK_TYPE(exact_dtype ? tensor.scalar_type() == expected : tensor.is_floating_point(),
                   "rarekit.cross_entropy: ", name, " must be ", exact_dtype ? c10::toString(expected) : "floating point",
                   " for ", logits.scalar_type(), " logits, got ", tensor.scalar_type());
  return contiguous_as(tensor, expected);
}

inline CrossEntropyInputs prepare_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& adjust,
                                                const std::optional<at::Tensor>& margin, int64_t ignore_index,
                                                double label_smoothing, bool target_weighted, double focal_gamma,
                                                double z_loss) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "rarekit.cross_entropy: logits must be (rows, classes), got ", logits.sizes());
  check_class_targets(target, logits.size(0), logits.device(), "rarekit.cross_entropy");
  refuse_forward_ad(logits, "logits", "rarekit.cross_entropy");
  refuse_forward_ad(adjust, "logit_adjustment", "rarekit.cross_entropy");
  const auto type = logits.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf || type == at::kDouble,
                   "rarekit.cross_entropy: logits must be float32, float64, bfloat16 or float16, got ", type);
  TORCH_CHECK_VALUE(logits.size(1) > 0 || logits.size(0) == 0,
                    "rarekit.cross_entropy: logits must have at least one class, got shape ", logits.sizes());
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "rarekit.cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  TORCH_CHECK_VALUE(std::isfinite(focal_gamma) && focal_gamma >= 0.0 && std::isfinite(z_loss) && z_loss >= 0.0,
                    "rarekit.cross_entropy: focal_gamma and z_loss must be finite and >= 0, got focal_gamma=",
                    focal_gamma, ", z_loss=", z_loss);
  CrossEntropyInputs inputs;
  inputs.logits = logits.contiguous();
  inputs.target = contiguous_as(target, at::kLong);
  inputs.weight = class_vector(weight, "weight", logits);
  inputs.adjust = class_vector(adjust, "logit_adjustment", logits);
  inputs.margin = class_vector(margin, "target_margin", logits);
  CrossEntropyConfig& config = inputs.config;
  config.num_classes = logits.size(1);
  config.ignore_index = ignore_index;
  config.label_smoothing = label_smoothing;
  config.focal_gamma = focal_gamma;
  config.z_loss = z_loss;
  config.has_weight = inputs.weight.defined();
  config.target_weighted = target_weighted;
  config.weight_total = static_cast<double>(config.num_classes);
  // read by the CUDA kernels, no sync (the CPU operators add the weights on the host)
  if (config.has_weight && !logits.is_cpu()) inputs.weight_total = inputs.weight.sum();
  return inputs;
}

// cross_entropy_reduced's reduction codes (as sigmoid_loss_forward's).
constexpr int64_t kReduceMean = 1, kReduceSum = 2;

// cross_entropy_reduced's reduction and sample_weight checked: (rows,) floating point on the logits' device,
// returned in the accumulator dtype (undefined without).
inline at::Tensor reduced_sample_weight(const std::optional<at::Tensor>& sample_weight, int64_t reduction,
                                        const at::Tensor& logits) {
  TORCH_CHECK_VALUE(reduction == kReduceMean || reduction == kReduceSum,
                    "rarekit.cross_entropy: reduction must be 1 (mean) or 2 (sum) for cross_entropy_reduced, got ",
                    reduction);
  return sample_weight ? row_vector(*sample_weight, "sample_weight", {logits.size(0)}, logits) : at::Tensor();
}

// Raises IndexError naming the first target outside [0, classes) that is not ignore_index.
// One host synchronization on CUDA.
inline void check_targets(const at::Tensor& target, int64_t classes, int64_t ignore_index) {
  const at::Tensor bad = target.lt(0).logical_or(target.ge(classes)).logical_and(target.ne(ignore_index));
  if (!bad.any().item<bool>()) return;
  const int64_t row = bad.nonzero()[0][0].item<int64_t>();
  TORCH_CHECK_INDEX(false, "rarekit.cross_entropy: target[", row, "] = ", target[row].item<int64_t>(),
                    " is out of range for ", classes, " classes (and is not ignore_index=", ignore_index, ")");
}

namespace cpu {
// The CPU kernel of rarekit::cross_entropy_reduced (csrc/cpu/cross_entropy.cpp). Also bound as
// rarekit._C.cross_entropy_reduced_cpu: the eager autograd Function calls it directly on plain CPU tensors,
// which skips the boxed dispatch of a Python op call (about a fifth of a 64 x 2 forward).
std::tuple<at::Tensor, at::Tensor> cross_entropy_reduced_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    const std::optional<at::Tensor>& sample_weight,
    int64_t ignore_index, double label_smoothing, bool target_weighted, double focal_gamma, double z_loss,
    int64_t reduction, bool compute_grad, bool check);

// The same "mean"/"sum" loss with its autograd node in C++ (csrc/cpu/cross_entropy_eager.cpp), bound as
// rarekit._C.cross_entropy_reduced_autograd: the eager entry on plain CPU tensors that require grad.
at::Tensor cross_entropy_reduced_autograd(const at::Tensor& logits, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& logit_adjustment,
                                          const std::optional<at::Tensor>& target_margin,
                                          const std::optional<at::Tensor>& sample_weight, int64_t ignore_index,
                                          double label_smoothing, bool target_weighted, double focal_gamma,
                                          double z_loss, int64_t reduction, bool check);
}  // namespace cpu

}  // namespace rarekit
