// rarekit::linear_cross_entropy_forward, device-generic: the CPU (csrc/cpu/linear_cross_entropy.cpp) and
// CUDA (csrc/cuda/linear_cross_entropy.cu) registrations call this one implementation.
//
// Per chunk of rows (Liger Kernel's strategy, "Liger Kernel: Efficient Triton Kernels for LLM Training",
// Hsu et al. 2024): logits = hidden_c @ classifierᵀ + bias (at::addmm: the platform's BLAS, input dtype,
// fp32 accumulation), optionally z = s·tanh(logits/s), then the fused cross-entropy row kernel
// (rarekit::cross_entropy_forward_inplace, called through the dispatcher; it applies logit_adjustment and
// target_margin) writes the per-row losses and
// overwrites the chunk with ∂(Σ_i c_i loss_i)/∂z. From that chunk gradient G:
//   grad_logit_adjustment += Σ_rows G          (z' = z + a, so ∂/∂a is the column sum)
//   G *= 1 - tanh²(logits/s)                   (softcap only; its one extra chunk buffer holds tanh)
//   grad_bias += Σ_rows G,  grad_hidden_c = G @ classifier,  grad_classifier += Gᵀ @ hidden_c (fp32)
// Only one chunk of logits exists at a time; without grad_scale the chunk loop runs the forward only.
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "rarekit/cross_entropy_op.h"

namespace rarekit {

using LinearCrossEntropyResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

namespace linear_ce_detail {

inline void check_vector(const std::optional<at::Tensor>& vector, const char* name, const at::Tensor& classifier) {
  check_class_vector(vector, name, classifier.size(0), classifier.device(), "rarekit.linear_cross_entropy");
}

inline void check_arguments(const at::Tensor& hidden, const at::Tensor& classifier, const std::optional<at::Tensor>& bias,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& logit_adjustment,
                            const std::optional<at::Tensor>& target_margin,
                            const std::optional<at::Tensor>& grad_scale, std::optional<double> softcap,
                            int64_t chunk_rows) {
  refuse_forward_ad(hidden, "hidden", "rarekit.linear_cross_entropy");
  refuse_forward_ad(classifier, "classifier", "rarekit.linear_cross_entropy");
  refuse_forward_ad(bias, "bias", "rarekit.linear_cross_entropy");
  const auto type = hidden.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf || type == at::kDouble,
                   "rarekit.linear_cross_entropy: hidden must be float32, bfloat16, float16 or float64, got ", type);
  TORCH_CHECK_VALUE(hidden.dim() == 2, "rarekit.linear_cross_entropy: hidden must be (rows, dim), got ", hidden.sizes());
  TORCH_CHECK_VALUE(classifier.dim() == 2 && classifier.size(1) == hidden.size(1) && classifier.size(0) > 0,
                    "rarekit.linear_cross_entropy: classifier must be (classes >= 1, ", hidden.size(1), "), got ",
                    classifier.sizes());
  TORCH_CHECK_TYPE(classifier.scalar_type() == type, "rarekit.linear_cross_entropy: classifier must be ", type,
                   " like hidden, got ", classifier.scalar_type());
  TORCH_CHECK_VALUE(classifier.device() == hidden.device(), "rarekit.linear_cross_entropy: classifier is on ",
                    classifier.device(), " but hidden is on ", hidden.device());
  if (bias) {
    check_vector(bias, "bias", classifier);
    TORCH_CHECK_TYPE(bias->scalar_type() == type, "rarekit.linear_cross_entropy: bias must be ", type,
                     " like hidden, got ", bias->scalar_type());
  }
  check_class_targets(target, hidden.size(0), hidden.device(), "rarekit.linear_cross_entropy");
  check_vector(weight, "weight", classifier);
  check_vector(logit_adjustment, "logit_adjustment", classifier);
  check_vector(target_margin, "target_margin", classifier);
  if (grad_scale) {
    TORCH_CHECK_VALUE(grad_scale->dim() == 1 && (grad_scale->size(0) == 1 || grad_scale->size(0) == hidden.size(0)),
                      "rarekit.linear_cross_entropy: grad_scale must have shape (1,) or (", hidden.size(0), ",), got ",
                      grad_scale->sizes());
    TORCH_CHECK_VALUE(grad_scale->device() == hidden.device(), "rarekit.linear_cross_entropy: grad_scale is on ",
                      grad_scale->device(), " but hidden is on ", hidden.device());
    TORCH_CHECK_TYPE(grad_scale->is_floating_point(), "rarekit.linear_cross_entropy: grad_scale must be floating point, got ",
                     grad_scale->scalar_type());
  }
  TORCH_CHECK_VALUE(!softcap || (std::isfinite(*softcap) && *softcap > 0.0),
                    "rarekit.linear_cross_entropy: softcap must be a finite number > 0, got ", softcap.value_or(0.0));
  TORCH_CHECK_VALUE(chunk_rows >= 1, "rarekit.linear_cross_entropy: chunk_rows must be >= 1, got ", chunk_rows);
}

using CrossEntropyForward = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, int64_t, double, bool, double, double, bool);
using CrossEntropyForwardInplace = std::tuple<at::Tensor, at::Tensor>(
    at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, int64_t, double, bool, double, double, bool);

// grad_classifier_acc (fp32 or fp64) += gradᵀ @ rows, with the matmul in the input dtype
inline void accumulate_classifier_grad(at::Tensor& acc, const at::Tensor& grad, const at::Tensor& rows) {
  if (acc.scalar_type() == grad.scalar_type()) {
    acc.addmm_(grad.t(), rows);
  } else if (acc.is_cuda()) {  // cuBLAS: bf16/fp16 operands, fp32 output and accumulation in place
    at::addmm_out(acc, acc, grad.t(), rows, acc.scalar_type());
  } else {  // CPU has no mixed-dtype addmm: one (classes, dim) product in the input dtype
    acc.add_(at::mm(grad.t(), rows));
  }
}

}  // namespace linear_ce_detail

// losses: (rows,) per-row cross-entropy of softcap(hidden @ classifierᵀ + bias) (float64 for float64
// inputs, float32 otherwise). With grad_scale c ((1,): one scale; (rows,): one per row), also the
// gradients of Σ_i c_i losses_i for hidden, classifier, bias and logit_adjustment, each where grad_mask
// asks for it (and the input is given); the others, and all four without grad_scale, are empty. A frozen
// classifier (LoRA, a frozen embedding) thus skips its (classes, dim) product and fp32 accumulator.
inline LinearCrossEntropyResult linear_cross_entropy_forward(
    const at::Tensor& hidden, const at::Tensor& classifier, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& logit_adjustment,
    const std::optional<at::Tensor>& target_margin, const std::optional<at::Tensor>& grad_scale, int64_t ignore_index,
    double label_smoothing, bool target_weighted, double focal_gamma, double z_loss, std::optional<double> softcap,
    int64_t chunk_rows, std::array<bool, 4> grad_mask, bool check) {
  using namespace linear_ce_detail;
  check_arguments(hidden, classifier, bias, target, weight, logit_adjustment, target_margin, grad_scale, softcap,
                  chunk_rows);
  const int64_t rows = hidden.size(0), classes = classifier.size(0), dim = hidden.size(1);
  const bool grad = grad_scale.has_value();
  const bool per_row_scale = grad && grad_scale->size(0) == rows && rows != 1;
  const at::ScalarType acc_type = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::TensorOptions acc = hidden.options().dtype(acc_type);
  const at::Tensor labels = target.to(at::kLong).contiguous();
  if (check) check_targets(labels, classes, ignore_index);  // once, not per chunk (one sync on CUDA)
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("rarekit::cross_entropy_forward", "")
                                     .typed<CrossEntropyForward>();
  static const auto inplace_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("rarekit::cross_entropy_forward_inplace", "")
                                     .typed<CrossEntropyForwardInplace>();

  const bool hidden_grad = grad && grad_mask[0], classifier_grad = grad && grad_mask[1];
  const bool bias_grad = grad && bias && grad_mask[2], adjustment_grad = grad && logit_adjustment && grad_mask[3];
  at::Tensor losses = at::empty({rows}, acc);
  at::Tensor grad_hidden = hidden_grad ? at::empty_like(hidden, at::MemoryFormat::Contiguous) : hidden.new_empty({0});
  at::Tensor grad_classifier = classifier_grad ? at::zeros({classes, dim}, acc) : hidden.new_empty({0});
  at::Tensor grad_bias = bias_grad ? at::zeros({classes}, acc) : hidden.new_empty({0});
  at::Tensor grad_adjustment = adjustment_grad ? at::zeros({classes}, acc) : hidden.new_empty({0});
  const int64_t step = std::min(chunk_rows, std::max<int64_t>(rows, 1));
  at::Tensor buffer = at::empty({step, classes}, hidden.options());
  at::Tensor tanh_buffer = softcap && grad ? at::empty({step, classes}, hidden.options()) : at::Tensor();
  const at::Tensor kernel_scale =
      grad ? (per_row_scale ? at::ones({1}, acc) : *grad_scale) : at::Tensor();
  const at::Tensor classifier_t = classifier.t();

  for (int64_t start = 0; start < rows; start += step) {
    const int64_t count = std::min(step, rows - start);
    const at::Tensor rows_hidden = hidden.narrow(0, start, count);
    const at::Tensor rows_target = labels.narrow(0, start, count);
    at::Tensor logits = buffer.narrow(0, 0, count);
    if (bias) {
      at::addmm_out(logits, *bias, rows_hidden, classifier_t);
    } else {
      at::mm_out(logits, rows_hidden, classifier_t);
    }
    at::Tensor tanh_values;
    if (softcap) {
      logits.div_(*softcap).tanh_();
      if (grad) tanh_values = tanh_buffer.narrow(0, 0, count).copy_(logits);
      logits.mul_(*softcap);
    }
    if (!grad) {
      losses.narrow(0, start, count).copy_(std::get<0>(forward_op.call(
          logits, rows_target, weight, logit_adjustment, target_margin, ignore_index, label_smoothing, target_weighted,
          focal_gamma, z_loss, false)));
      continue;
    }
    losses.narrow(0, start, count).copy_(std::get<0>(inplace_op.call(
        logits, rows_target, weight, logit_adjustment, target_margin, kernel_scale, ignore_index, label_smoothing,
        target_weighted, focal_gamma, z_loss, false)));
    if (per_row_scale) logits.mul_(grad_scale->narrow(0, start, count).unsqueeze(1));
    if (adjustment_grad) grad_adjustment.add_(logits.sum(0, false, acc_type));
    if (softcap) logits.addcmul_(logits, tanh_values.mul_(tanh_values), -1);  // G (1 - tanh²)
    if (bias_grad) grad_bias.add_(logits.sum(0, false, acc_type));
    if (hidden_grad) {
      at::Tensor rows_grad_hidden = grad_hidden.narrow(0, start, count);
      at::mm_out(rows_grad_hidden, logits, classifier);
    }
    if (classifier_grad) accumulate_classifier_grad(grad_classifier, logits, rows_hidden);
  }
  if (grad) {
    if (classifier_grad) grad_classifier = grad_classifier.to(classifier.scalar_type());
    if (bias_grad) grad_bias = grad_bias.to(bias->scalar_type());
    if (adjustment_grad) grad_adjustment = grad_adjustment.to(logit_adjustment->scalar_type());
  }
  return {losses, grad_hidden, grad_classifier, grad_bias, grad_adjustment};
}

}  // namespace rarekit
