// Argument checks and preparation shared by the CPU and CUDA cross-entropy operators.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "rarekit/cross_entropy_math.h"

namespace rarekit {

struct CrossEntropyInputs {
  at::Tensor logits;  // (rows, classes), contiguous
  at::Tensor target;  // (rows,) int64
  at::Tensor weight;  // (classes,) fp32, or undefined
  at::Tensor adjust;  // (classes,) fp32, or undefined
  at::Tensor weight_total;  // () fp32 Σ w, computed on the device, or undefined
  CrossEntropyConfig config;
};

inline at::Tensor class_vector(const std::optional<at::Tensor>& vector, const char* name, const at::Tensor& logits) {
  if (!vector) return {};
  TORCH_CHECK_VALUE(vector->dim() == 1 && vector->size(0) == logits.size(1), "rarekit.cross_entropy: ", name,
                    " must have shape (", logits.size(1), ",), got ", vector->sizes());
  TORCH_CHECK_VALUE(vector->device() == logits.device(), "rarekit.cross_entropy: ", name, " is on ",
                    vector->device(), " but logits are on ", logits.device());
  TORCH_CHECK_VALUE(vector->is_floating_point(), "rarekit.cross_entropy: ", name,
                    " must be floating point, got ", vector->scalar_type());
  return vector->to(at::kFloat).contiguous();
}

inline CrossEntropyInputs prepare_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& adjust, int64_t ignore_index,
                                                double label_smoothing, bool target_weighted, double focal_gamma,
                                                double z_loss) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "rarekit.cross_entropy: logits must be (rows, classes), got ", logits.sizes());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == logits.size(0),
                    "rarekit.cross_entropy: target must have shape (", logits.size(0), ",), got ", target.sizes());
  TORCH_CHECK_VALUE(target.device() == logits.device(), "rarekit.cross_entropy: target is on ", target.device(),
                    " but logits are on ", logits.device());
  TORCH_CHECK_TYPE(!at::isFloatingType(target.scalar_type()) && target.scalar_type() != at::kBool,
                   "rarekit.cross_entropy: target must hold integer class indices, got ", target.scalar_type());
  const auto type = logits.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf,
                   "rarekit.cross_entropy: logits must be float32, bfloat16 or float16, got ", type);
  CrossEntropyInputs inputs;
  inputs.logits = logits.contiguous();
  inputs.target = target.to(at::kLong).contiguous();
  inputs.weight = class_vector(weight, "weight", logits);
  inputs.adjust = class_vector(adjust, "logit_adjustment", logits);
  CrossEntropyConfig& config = inputs.config;
  config.num_classes = logits.size(1);
  config.ignore_index = ignore_index;
  config.label_smoothing = static_cast<float>(label_smoothing);
  config.focal_gamma = static_cast<float>(focal_gamma);
  config.z_loss = static_cast<float>(z_loss);
  config.has_weight = inputs.weight.defined();
  config.target_weighted = target_weighted;
  config.weight_total = static_cast<float>(config.num_classes);
  if (config.has_weight) inputs.weight_total = inputs.weight.sum();  // read by the kernels, no sync
  return inputs;
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

}  // namespace rarekit
