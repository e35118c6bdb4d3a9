// Argument checks and preparation shared by the CPU and CUDA sigmoid-family operators: every
// argument's shape, dtype and device is checked here, before any kernel touches memory.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "rarekit/sigmoid_math.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

constexpr const char* kSigmoidOpName = "rarekit.binary_cross_entropy_with_logits";

struct SigmoidOperandTensor {
  at::Tensor values;  // in the accumulator dtype, contiguous; undefined for kOperandNone
  int kind = kOperandNone;
};

struct SigmoidInputs {
  at::Tensor input, target;  // contiguous, of one dtype
  int64_t rows = 0, cols = 0;  // the (rows, cols) view the kernels walk; cols = the last dimension
  SigmoidOperandTensor weight, pos_weight, alpha;
  SigmoidParams<double> params{};
  int64_t reduction = kReductionMean;
};

// float64 for float64 inputs, float32 for float32, bfloat16 and float16 inputs.
inline at::ScalarType sigmoid_accumulator(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A weight, pos_weight or alpha tensor that broadcasts to the input's shape (as torch's BCE needs:
// the loss keeps the input's shape), classified by how it varies over the (rows, cols) view.
inline SigmoidOperandTensor sigmoid_operand(const std::optional<at::Tensor>& operand, const char* name,
                                            const at::Tensor& input, int64_t rows, int64_t cols) {
  if (!operand) return {};
  const at::Tensor& values = *operand;
  TORCH_CHECK_VALUE(values.device() == input.device(), kSigmoidOpName, ": ", name, " is on ", values.device(),
                    " but the input is on ", input.device());
  TORCH_CHECK_TYPE(values.is_floating_point(), kSigmoidOpName, ": ", name, " must be floating point, got ",
                   values.scalar_type());
  bool broadcasts = values.dim() <= input.dim();
  for (int64_t d = 1; broadcasts && d <= values.dim(); ++d) {
    broadcasts = values.size(-d) == 1 || values.size(-d) == input.size(-d);
  }
  TORCH_CHECK_VALUE(broadcasts, kSigmoidOpName, ": ", name, " of shape ", values.sizes(),
                    " does not broadcast to the input's shape ", input.sizes());
  const at::ScalarType acc = sigmoid_accumulator(input);
  if (values.numel() == 1) return {values.reshape({1}).to(acc).contiguous(), kOperandScalar};
  const int64_t last = values.dim() > 0 ? values.size(-1) : 1;
  if (values.numel() == last && last == cols) return {values.reshape({cols}).to(acc).contiguous(), kOperandColumn};
  if (last == 1) {
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = 1;
    return {values.expand(shape).reshape({rows}).to(acc).contiguous(), kOperandRow};
  }
  return {values.expand(input.sizes()).to(acc).contiguous(), kOperandFull};
}

inline SigmoidInputs prepare_sigmoid(const at::Tensor& input, const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& pos_weight,
                                     const std::optional<at::Tensor>& alpha_tensor, std::optional<double> alpha,
                                     double gamma_pos, double gamma_neg, double clip, bool pt_form,
                                     int64_t reduction) {
  refuse_forward_ad(input, "input", kSigmoidOpName);
  refuse_forward_ad(target, "target", kSigmoidOpName);
  refuse_forward_ad(weight, "weight", kSigmoidOpName);
  refuse_forward_ad(pos_weight, "pos_weight", kSigmoidOpName);
  const auto type = input.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf || type == at::kDouble,
                   kSigmoidOpName, ": input must be float32, float64, bfloat16 or float16, got ", type);
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), kSigmoidOpName, ": target size (", target.sizes(),
                    ") must be the same as input size (", input.sizes(), ")");
  TORCH_CHECK_VALUE(target.device() == input.device(), kSigmoidOpName, ": target is on ", target.device(),
                    " but the input is on ", input.device());
  TORCH_CHECK_TYPE(target.scalar_type() == type, kSigmoidOpName, ": target must have the input's dtype ", type,
                   ", got ", target.scalar_type());
  TORCH_CHECK_VALUE(std::isfinite(gamma_pos) && gamma_pos >= 0.0 && std::isfinite(gamma_neg) && gamma_neg >= 0.0,
                    kSigmoidOpName, ": focal gammas must be finite and >= 0, got gamma_pos=", gamma_pos,
                    ", gamma_neg=", gamma_neg);
  TORCH_CHECK_VALUE(clip >= 0.0 && clip < 1.0, kSigmoidOpName, ": clip must be in [0, 1), got ", clip);
  TORCH_CHECK_VALUE(!alpha || std::isfinite(*alpha), kSigmoidOpName, ": focal_alpha must be finite, got ",
                    alpha.value_or(0.0));
  TORCH_CHECK_VALUE(!(alpha && alpha_tensor), kSigmoidOpName, ": pass focal_alpha as a number or a tensor, not both");
  TORCH_CHECK_VALUE(reduction >= kReductionNone && reduction <= kReductionSum, kSigmoidOpName,
                    ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  SigmoidInputs inputs;
  inputs.input = input.contiguous();
  inputs.target = target.contiguous();
  inputs.cols = input.dim() > 0 ? input.size(-1) : 1;
  inputs.rows = inputs.cols > 0 ? input.numel() / inputs.cols : 0;
  inputs.weight = sigmoid_operand(weight, "weight", input, inputs.rows, inputs.cols);
  inputs.pos_weight = sigmoid_operand(pos_weight, "pos_weight", input, inputs.rows, inputs.cols);
  if (alpha_tensor) {
    inputs.alpha = sigmoid_operand(alpha_tensor, "focal_alpha", input, inputs.rows, inputs.cols);
  } else if (alpha) {
    inputs.alpha = {at::full({1}, *alpha, input.options().dtype(sigmoid_accumulator(input))), kOperandScalar};
  }
  if (inputs.cols == 1 && inputs.rows > 1) {  // (..., 1): one long row, per-row operands become per element
    for (SigmoidOperandTensor* operand : {&inputs.weight, &inputs.pos_weight, &inputs.alpha}) {
      if (operand->kind == kOperandRow) operand->kind = kOperandFull;
    }
    inputs.cols = inputs.rows;
    inputs.rows = 1;
  }
  inputs.params = {gamma_pos, gamma_neg, clip, pt_form};
  inputs.reduction = reduction;
  return inputs;
}

// The upstream gradient of the backward: the input's shape for reduction="none" (converted to the
// input's dtype), one value otherwise (in the accumulator dtype).
inline at::Tensor sigmoid_grad_loss(const at::Tensor& grad_loss, const SigmoidInputs& inputs) {
  TORCH_CHECK_VALUE(grad_loss.device() == inputs.input.device(), kSigmoidOpName, ": grad_loss is on ",
                    grad_loss.device(), " but the input is on ", inputs.input.device());
  TORCH_CHECK_TYPE(grad_loss.is_floating_point(), kSigmoidOpName, ": grad_loss must be floating point, got ",
                   grad_loss.scalar_type());
  if (inputs.reduction == kReductionNone) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == inputs.input.sizes(), kSigmoidOpName, ": grad_loss must have shape ",
                      inputs.input.sizes(), ", got ", grad_loss.sizes());
    return grad_loss.to(inputs.input.scalar_type()).contiguous();
  }
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, kSigmoidOpName, ": grad_loss of a reduced loss must hold one value, got ",
                    grad_loss.sizes());
  return grad_loss.reshape({1}).to(sigmoid_accumulator(inputs.input)).contiguous();
}

// An output that was not asked for: empty, of the input's dtype.
inline at::Tensor sigmoid_no_output(const at::Tensor& input) { return at::empty({0}, input.options()); }

}  // namespace rarekit
