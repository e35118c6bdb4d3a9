// The cross-entropy family's per-row math, shared by the CPU (per-ISA) and CUDA kernels.
//
// For a row with logits z, logit adjustment a and target margin m (z'_k = z_k + a_k, and
// z'_y = z_y + a_y - m_y for the target: LDAM, Cao et al. 2019), target y, class weights w (1 without),
// smoothing ε over C classes, focal γ and z-loss ζ, with lse = log Σ_k exp z'_k and p = softmax(z'):
//   B = (1-ε) w_y (lse - z'_y) + (ε/C) Σ_k v_k (lse - z'_k)     smoothed, weighted cross-entropy
//       v_k = w_k  ("pytorch" mode, as torch.nn.functional.cross_entropy)
//       v_k = w_y  ("target_weighted" mode: the whole row is scaled by its target's weight)
//   f = (1 - p_y)^γ                                              focal factor (Lin et al. 2017)
//   loss = f B + ζ w_y lse²                                      z-loss (PaLM, Chowdhery et al. 2022)
// and the gradient is analytic (z' - z is constant, so ∂/∂z = ∂/∂z'):
//   ∂loss/∂z_j = coef_p p_j - coef_v v'_j - [j = y] coef_y,  v'_j = w_j (pytorch mode with weights) or 1
//   coef_p = f (u + (ε/C) V) + B g + 2 ζ w_y lse,  coef_y = f u + B g,  coef_v = f (ε/C) s
//   with u = (1-ε) w_y, V = Σ_k v_k, s = w_y in target_weighted mode (1 otherwise),
//   g = γ (1-p_y)^(γ-1) p_y  (∂f/∂z_j = -g (δ_jy - p_j)).
#pragma once
#include <cmath>

#include "rarekit/common.h"

namespace rarekit {

// Scalars are kept in double; the row math rounds them once to its accumulator type.
struct CrossEntropyConfig {
  int64_t num_classes;
  int64_t ignore_index;
  double label_smoothing;  // ε
  double focal_gamma;      // γ
  double z_loss;           // ζ
  double weight_total;     // Σ_k w_k (num_classes without weights)
  bool has_weight;
  bool target_weighted;
};

// The accumulator of a logit dtype: double for float64 logits, float for float32, bf16 and fp16.
template <typename T>
struct Accumulator {
  using type = float;
};
template <>
struct Accumulator<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Accumulator<T>::type;

// exp, log, expm1 and pow of the accumulator type (device code needs the float-suffixed names).
RAREKIT_HOST_DEVICE float exp_of(float x) { return expf(x); }
RAREKIT_HOST_DEVICE double exp_of(double x) { return exp(x); }
RAREKIT_HOST_DEVICE float expm1_of(float x) { return expm1f(x); }
RAREKIT_HOST_DEVICE double expm1_of(double x) { return expm1(x); }
RAREKIT_HOST_DEVICE float pow_of(float x, float y) { return powf(x, y); }
RAREKIT_HOST_DEVICE double pow_of(double x, double y) { return pow(x, y); }

// v'_k = w_k (the smoothing term runs over the class weights) only in pytorch mode with weights.
RAREKIT_HOST_DEVICE bool per_class_smoothing(const CrossEntropyConfig& config) {
  return config.has_weight && !config.target_weighted;
}

// What the backward needs of a row, saved by the forward (ignored rows: all zero). The gradient is
// coef_p exp(z'_k - max_logit) - coef_v v'_k - [k = y] coef_y: coef_p holds the 1/Σ exp(z' - max)
// of the softmax, so no lse that lost the low bits of large logits is ever subtracted.
template <typename Acc>
struct CrossEntropyRowTerms {
  Acc max_logit, coef_p, coef_y, coef_v;
};
constexpr int kRowTermCount = 4;

// The operations cross_entropy_row needs, for one row at a time (Acc = float or double). The CPU
// few-class kernels pass a policy of the same shape that works on 16 rows at once (one per lane).
template <typename Acc>
struct ScalarRowMath {
  using Scalar = Acc;
  RAREKIT_HOST_DEVICE_MEMBER static Acc splat(double value) { return static_cast<Acc>(value); }
  RAREKIT_HOST_DEVICE_MEMBER static Acc select(bool mask, Acc if_true, Acc if_false) { return mask ? if_true : if_false; }
  RAREKIT_HOST_DEVICE_MEMBER static Acc exp(Acc x) { return exp_of(x); }
  RAREKIT_HOST_DEVICE_MEMBER static Acc expm1(Acc x) { return expm1_of(x); }
  RAREKIT_HOST_DEVICE_MEMBER static Acc pow(Acc x, Acc y) { return pow_of(x, y); }
};

// The loss of one non-ignored row and its gradient coefficients, from the row's max logit m (0 when
// every logit is -inf) and log_sum = log Σ_k exp(z'_k - m), so lse = m + log_sum;
// target_logit = z'_y (with its margin), smooth_sum_shifted = Σ_k v'_k (z'_k - shift), w_y = the target's weight.
// Differences are taken before adding m or the shift (any value near the logits), which keeps
// lse - z'_y and Σ v'_k (lse - z'_k) accurate for large logits (±1e4), as torch's log_softmax is.
// A target on a -inf logit (a masked vocabulary) gives an inf loss and, as in torch, the finite
// gradient of the softmax: B g enters the coefficients only where the focal slope g is not 0.
template <typename Acc, typename Math = ScalarRowMath<Acc>>
RAREKIT_HOST_DEVICE Acc cross_entropy_row(const CrossEntropyConfig& config, Acc max_logit, Acc log_sum,
                                          Acc target_logit, Acc smooth_sum_shifted, Acc shift, Acc w_y,
                                          CrossEntropyRowTerms<Acc>* terms) {
  using Scalar = typename Math::Scalar;
  const Acc zero = Math::splat(0.0), one = Math::splat(1.0);
  const Acc eps = Math::splat(config.label_smoothing);
  const Acc eps_per_class = eps / Math::splat(static_cast<double>(config.num_classes));
  const Acc u = (one - eps) * w_y;
  const Acc smooth_scale = config.target_weighted ? w_y : one;
  const Acc v_total = per_class_smoothing(config) ? Math::splat(config.weight_total)
                                                   : smooth_scale * Math::splat(static_cast<double>(config.num_classes));
  const Acc lse = max_logit + log_sum;
  // Σ_k v_k (lse - z'_k) = V (lse - shift) - s Σ_k v'_k (z'_k - shift)
  const Acc smooth = v_total * ((max_logit - shift) + log_sum) - smooth_scale * smooth_sum_shifted;
  const Acc log_p_target = (target_logit - max_logit) - log_sum;
  const Acc base = (static_cast<Scalar>(config.label_smoothing) > Scalar(0) ? u * -log_p_target + eps_per_class * smooth
                                                                            : u * -log_p_target);
  Acc focal = one, focal_slope = zero;
  if (config.focal_gamma != 0.0) {
    const Acc gamma = Math::splat(config.focal_gamma);
    // log p_y <= 0; an approximate log can overshoot, and pow of a negative base is NaN (NaN stays)
    const Acc log_p = Math::select(log_p_target > zero, zero, log_p_target);
    const Acc p_target = Math::exp(log_p);
    const Acc one_minus_p = -Math::expm1(log_p);
    focal = Math::pow(one_minus_p, gamma);
    focal_slope = Math::select(one_minus_p > zero, gamma * Math::pow(one_minus_p, gamma - one) * p_target, zero);
  }
  const Acc base_slope = Math::select(focal_slope != zero, base * focal_slope, zero);
  const Acc z_term = Math::splat(config.z_loss) * w_y;
  terms->max_logit = max_logit;
  terms->coef_p = (focal * (u + eps_per_class * v_total) + base_slope + Math::splat(2.0) * z_term * lse) *
                  Math::exp(-log_sum);
  terms->coef_y = focal * u + base_slope;
  terms->coef_v = focal * eps_per_class * smooth_scale;
  return focal * base + z_term * lse * lse;
}

}  // namespace rarekit
