// The sigmoid loss family's per-element math, shared by the CPU (per-ISA, 16 lanes at a time; scalar
// double) and CUDA kernels. One template serves a float, a double and a GCC vector of floats: `Math`
// supplies exp, log and log1p for that value type, and every branch on data is a select (a ? b : c).
//
// With p = σ(x), q = 1 - p, target y, weight w, pos_weight pw, α₊/α₋ (α and 1 - α, or 1 and 1
// without α), γ₊ = gamma_pos, γ₋ = gamma_neg, clip c, p_m = max(p - c, 0) and r = 1 - p_m:
//   linear form (rarekit.binary_cross_entropy_with_logits; exactly torch's BCE for γ = 0, no α, c = 0):
//     ℓ = -w [ α₊ pw y q^γ₊ log p + α₋ (1 - y) p_m^γ₋ log r ]
//   p_t form (torchvision.ops.sigmoid_focal_loss; timm's AsymmetricLossMultiLabel), the same for y ∈ {0, 1}:
//     ℓ = -w α_t u^g L,  α_t = α₊ y + α₋ (1 - y),  u = y q + (1 - y) p_m,  g = γ₊ y + γ₋ (1 - y),
//                        L = pw y log p + (1 - y) log r
// log p and log q are log-sigmoids, min(±x, 0) - log1p(exp(-|x|)), in the accumulator type (float for
// float16/bfloat16/float32, double for float64): finite for any finite logit. Powers are exp(γ log ·).
// The derivatives (∂ℓ/∂x and ∂ℓ/∂y) are analytic; see sigmoid_element.
#pragma once
#include <cmath>

#include "rarekit/common.h"

namespace rarekit {

// torch's Reduction enum: the reduction argument of the sigmoid ops.
enum SigmoidReduction : int64_t { kReductionNone = 0, kReductionMean = 1, kReductionSum = 2 };

// How a broadcast operand (weight, pos_weight, alpha) varies over the (rows, cols) view of the input
// (cols = the input's last dimension): absent, one value, one per column, one per row, or one per element.
enum SigmoidOperandKind : int { kOperandNone = 0, kOperandScalar, kOperandColumn, kOperandRow, kOperandFull };

template <typename S>
struct SigmoidParams {
  S gamma_pos, gamma_neg, clip;
  bool pt_form;
};

template <typename V>
struct SigmoidTerms {
  V loss, grad_input, grad_target;
};

// A broadcast operand: its kind (SigmoidOperandKind) and values in the accumulator type (1 value,
// cols, rows, or rows * cols).
template <typename Acc>
struct SigmoidOperand {
  const Acc* data;
  int kind;
};

// What one pass of a kernel reads and writes. Contiguous input and target of one dtype T, viewed as
// (rows, cols). Each output pointer may be null: losses (per element), grad_input and grad_target (all
// of dtype T). The gradients are multiplied by grad_losses (dtype T, per element) or else by grad_scale.
template <typename Acc>
struct SigmoidArgsT {
  SigmoidParams<Acc> params;
  int64_t rows, cols;
  const void* input;
  const void* target;
  SigmoidOperand<Acc> weight, pos_weight, alpha;
  void* losses;
  void* grad_input;
  void* grad_target;
  const void* grad_losses;
  Acc grad_scale;
};

// SigmoidArgsT's pointers as the element dtype T.
template <typename T>
struct SigmoidPointers {
  const T* input;
  const T* target;
  T* losses;
  T* grad_input;
  T* grad_target;
  const T* grad_losses;
};

template <typename T, typename Acc>
RAREKIT_HOST_DEVICE SigmoidPointers<T> typed_pointers(const SigmoidArgsT<Acc>& args) {
  return {static_cast<const T*>(args.input),      static_cast<const T*>(args.target),
          static_cast<T*>(args.losses),           static_cast<T*>(args.grad_input),
          static_cast<T*>(args.grad_target),      static_cast<const T*>(args.grad_losses)};
}

template <typename Acc>
RAREKIT_HOST_DEVICE Acc operand_value(const SigmoidOperand<Acc>& operand, int64_t row, int64_t col,
                                      int64_t position) {
  switch (operand.kind) {
    case kOperandScalar: return operand.data[0];
    case kOperandColumn: return operand.data[col];
    case kOperandRow: return operand.data[row];
    case kOperandFull: return operand.data[position];
    default: return Acc(1);
  }
}

// exp, log and log1p of a float or a double, on the host and the device: the Math of sigmoid_element
// for one element (the per-ISA CPU kernels bring their own, 16 lanes wide; their log1p(e, 1/(1 + e))
// may use the reciprocal). Internal linkage, as the helpers above.
namespace {
struct ScalarMath {
#if defined(__CUDACC__)
#define RAREKIT_SCALAR_MATH __host__ __device__ __forceinline__
#else
#define RAREKIT_SCALAR_MATH inline
#endif
  static RAREKIT_SCALAR_MATH float exp(float x) { return expf(x); }
  static RAREKIT_SCALAR_MATH double exp(double x) { return ::exp(x); }
  static RAREKIT_SCALAR_MATH float log(float x) { return logf(x); }
  static RAREKIT_SCALAR_MATH double log(double x) { return ::log(x); }
  static RAREKIT_SCALAR_MATH float log1p(float x, float) { return log1pf(x); }
  static RAREKIT_SCALAR_MATH double log1p(double x, double) { return ::log1p(x); }
#undef RAREKIT_SCALAR_MATH
};
}  // namespace

// Loss and, when `grads`, ∂ℓ/∂x and ∂ℓ/∂y of one element (or one vector of elements). S is the
// scalar type of V (float for float vectors).
template <typename Math, typename S, typename V>
RAREKIT_HOST_DEVICE SigmoidTerms<V> sigmoid_element(const SigmoidParams<S>& params, V x, V y, V w, V pw, V a_pos,
                                                     V a_neg, bool grads) {
  const V zero = V{}, one = zero + S(1);
  const V e = Math::exp(x < zero ? x : -x);  // exp(-|x|) in (0, 1]
  const V inv = one / (one + e);
  const V log1p_e = Math::log1p(e, inv);
  const V log_p = (x < zero ? x : zero) - log1p_e;
  const V log_q = (x < zero ? zero : -x) - log1p_e;
  const V p = x < zero ? e * inv : inv, q = x < zero ? inv : e * inv;
  const V not_y = one - y;
  // the negative side: p_m, r = 1 - p_m, log r and ∂p_m/∂x
  V p_m = p, r = q, log_r = log_q, dp_m = p * q;
  const bool clipped = params.clip > S(0);
  if (clipped) {
    p_m = p - params.clip;
    p_m = p_m > zero ? p_m : zero;
    r = q + params.clip;
    r = r < one ? r : one;
    log_r = Math::log(r);
    dp_m = p_m > zero ? dp_m : zero;
  }
  SigmoidTerms<V> terms{zero, zero, zero};
  if (!params.pt_form) {
    const V m_pos = params.gamma_pos == S(0) ? one : Math::exp(params.gamma_pos * log_q);
    // p_m^γ₋ (log p_m = -inf at p_m = 0, and the power 0 there)
    const V m_neg = params.gamma_neg == S(0) ? one : Math::exp(params.gamma_neg * (clipped ? Math::log(p_m) : log_p));
    const V pos = -(a_pos * pw) * m_pos * log_p;  // the loss of y = 1
    const V neg = -a_neg * m_neg * log_r;         // the loss of y = 0
    terms.loss = w * (y * pos + not_y * neg);
    if (!grads) return terms;
    const V d_pos = a_pos * pw * m_pos * (params.gamma_pos * p * log_p - q);
    V d_neg;
    if (clipped) {  // α₋ ∂p_m/∂x p_m^γ₋ (1/r - γ₋ log r / p_m), 0 where p_m = 0
      const V ratio = -log_r / p_m;
      d_neg = p_m > zero ? a_neg * dp_m * m_neg * (one / r + params.gamma_neg * ratio) : zero;
    } else {
      d_neg = a_neg * m_neg * (p - params.gamma_neg * q * log_q);
    }
    terms.grad_input = w * (y * d_pos + not_y * d_neg);
    terms.grad_target = w * (pos - neg);  // ℓ is linear in y
    return terms;
  }
  const V alpha_t = a_pos * y + a_neg * not_y;
  const V u = y * q + not_y * p_m;
  const V log_term = pw * y * log_p + not_y * log_r;
  // u^g and ∂(u^g)/∂u; one γ (torchvision's) of 1 or 2 needs no log (0^0 = 1, as torch.pow)
  const bool one_gamma = params.gamma_pos == params.gamma_neg;
  const V g = params.gamma_pos * y + params.gamma_neg * not_y;
  const V safe_u = u > zero ? u : one;
  V log_u = zero, modulator = one, d_modulator_du = zero;
  if (one_gamma && params.gamma_pos == S(2)) {
    modulator = u * u;
    d_modulator_du = S(2) * u;
  } else if (one_gamma && params.gamma_pos == S(1)) {
    modulator = u;
    d_modulator_du = one;
  } else if (params.gamma_pos != S(0) || params.gamma_neg != S(0)) {
    log_u = Math::log(u);
    modulator = g == zero ? one : Math::exp(g * log_u);
    d_modulator_du = u > zero ? g * modulator / safe_u : zero;
  }
  terms.loss = -w * alpha_t * modulator * log_term;
  if (!grads) return terms;
  const V du = not_y * dp_m - y * p * q;
  const V d_log_r = clipped ? -dp_m / r : -p;
  const V d_log_term = pw * y * q + not_y * d_log_r;
  terms.grad_input = -w * alpha_t * (d_modulator_du * du * log_term + modulator * d_log_term);
  // ∂/∂y: α_t, u, g and L are each linear in y; ∂(u^g)/∂g = u^g log u
  const V d_alpha_t = a_pos - a_neg;
  const V du_y = q - p_m;
  const V d_log_term_y = pw * log_p - log_r;
  V d_modulator_y = d_modulator_du * du_y;
  if (!one_gamma) d_modulator_y += u > zero ? (params.gamma_pos - params.gamma_neg) * log_u * modulator : zero;
  terms.grad_target = -w * (d_alpha_t * modulator * log_term + alpha_t * d_modulator_y * log_term +
                            alpha_t * modulator * d_log_term_y);
  return terms;
}

// The α factors of an element: (α, 1 - α), or (1, 1) without α.
template <typename V, typename S>
RAREKIT_HOST_DEVICE void alpha_factors(bool has_alpha, V alpha, V* a_pos, V* a_neg) {
  const V one = V{} + S(1);
  *a_pos = has_alpha ? alpha : one;
  *a_neg = has_alpha ? one - alpha : one;
}

}  // namespace rarekit
