// The cross-entropy family's per-row math, shared by the CPU (per-ISA) and CUDA kernels.
//
// For a row with logits z, logit adjustment a (z' = z + a), target y, class weights w (1 without),
// smoothing ε over C classes, focal γ and z-loss ζ, with lse = log Σ_k exp z'_k and p = softmax(z'):
//   B = (1-ε) w_y (lse - z'_y) + (ε/C) Σ_k v_k (lse - z'_k)     smoothed, weighted cross-entropy
//       v_k = w_k  ("pytorch" mode, as torch.nn.functional.cross_entropy)
//       v_k = w_y  ("target_weighted" mode: the whole row is scaled by its target's weight)
//   f = (1 - p_y)^γ                                              focal factor (Lin et al. 2017)
//   loss = f B + ζ w_y lse²                                      z-loss (PaLM, Chowdhery et al. 2022)
// and the gradient is analytic:
//   ∂loss/∂z_j = coef_p p_j - coef_v v'_j - [j = y] coef_y,  v'_j = w_j (pytorch mode with weights) or 1
//   coef_p = f (u + (ε/C) V) + B g + 2 ζ w_y lse,  coef_y = f u + B g,  coef_v = f (ε/C) s
//   with u = (1-ε) w_y, V = Σ_k v_k, s = w_y in target_weighted mode (1 otherwise),
//   g = γ (1-p_y)^(γ-1) p_y  (∂f/∂z_j = -g (δ_jy - p_j)).
#pragma once
#include <cmath>

#include "rarekit/common.h"

namespace rarekit {

struct CrossEntropyConfig {
  int64_t num_classes;
  int64_t ignore_index;
  float label_smoothing;  // ε
  float focal_gamma;      // γ
  float z_loss;           // ζ
  float weight_total;     // Σ_k w_k (num_classes without weights)
  bool has_weight;
  bool target_weighted;
};

// v'_k = w_k (the smoothing term runs over the class weights) only in pytorch mode with weights.
RAREKIT_HOST_DEVICE bool per_class_smoothing(const CrossEntropyConfig& config) {
  return config.has_weight && !config.target_weighted;
}

// What the backward needs of a row, saved by the forward (ignored rows: all zero). The gradient is
// coef_p exp(z'_k - max_logit) - coef_v v'_k - [k = y] coef_y: coef_p holds the 1/Σ exp(z' - max)
// of the softmax, so no lse that lost the low bits of large logits is ever subtracted.
struct CrossEntropyRowTerms {
  float max_logit, coef_p, coef_y, coef_v;
};
constexpr int kRowTermCount = 4;

// The loss of one non-ignored row and its gradient coefficients, from the row's max logit m (0 when
// every logit is -inf) and log_sum = log Σ_k exp(z'_k - m), so lse = m + log_sum;
// target_logit = z'_y, smooth_sum_shifted = Σ_k v'_k (z'_k - shift), w_y = the target's weight.
// Differences are taken before adding m or the shift (any value near the logits), which keeps
// lse - z'_y and Σ v'_k (lse - z'_k) accurate for large logits (±1e4), as torch's log_softmax is.
RAREKIT_HOST_DEVICE float cross_entropy_row(const CrossEntropyConfig& config, float max_logit, float log_sum,
                                            float target_logit, float smooth_sum_shifted, float shift, float w_y,
                                            CrossEntropyRowTerms* terms) {
  const float eps = config.label_smoothing;
  const float eps_per_class = eps / static_cast<float>(config.num_classes);
  const float u = (1.0f - eps) * w_y;
  const float smooth_scale = config.target_weighted ? w_y : 1.0f;
  const float v_total = per_class_smoothing(config) ? config.weight_total
                                                     : smooth_scale * static_cast<float>(config.num_classes);
  const float lse = max_logit + log_sum;
  // Σ_k v_k (lse - z'_k) = V (lse - shift) - s Σ_k v'_k (z'_k - shift)
  const float smooth = v_total * ((max_logit - shift) + log_sum) - smooth_scale * smooth_sum_shifted;
  const float log_p_target = (target_logit - max_logit) - log_sum;
  const float base = (eps > 0.0f ? u * -log_p_target + eps_per_class * smooth : u * -log_p_target);
  float focal = 1.0f, focal_slope = 0.0f;
  if (config.focal_gamma != 0.0f) {
    // log p_y <= 0; an approximate log can overshoot, and pow of a negative base is NaN (NaN stays)
    const float log_p = log_p_target > 0.0f ? 0.0f : log_p_target;
    const float p_target = expf(log_p);
    const float one_minus_p = -expm1f(log_p);
    focal = powf(one_minus_p, config.focal_gamma);
    focal_slope = one_minus_p > 0.0f ? config.focal_gamma * powf(one_minus_p, config.focal_gamma - 1.0f) * p_target : 0.0f;
  }
  const float z_term = config.z_loss * w_y;
  terms->max_logit = max_logit;
  terms->coef_p = (focal * (u + eps_per_class * v_total) + base * focal_slope + 2.0f * z_term * lse) * expf(-log_sum);
  terms->coef_y = focal * u + base * focal_slope;
  terms->coef_v = focal * eps_per_class * smooth_scale;
  return focal * base + z_term * lse * lse;
}

}  // namespace rarekit
