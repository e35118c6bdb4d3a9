// Per-row reductions of the CPU cross-entropy kernels (per-ISA translation units): the max, the sum of
// exponentials and the smoothing sum of a row of logits z' = z + a, in one pass over L1-sized blocks.
// Functions are static: each ISA's object keeps its own copies (see rarekit/common.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "rarekit/cpu_vector_math.h"

namespace rarekit::cpu {

static constexpr int64_t kBlock = 2048;  // logits per block: stays in L1/L2 between the block's two passes
static constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// logits[k] + adjust[k] for 16 classes (adjust may be null), for the `count` < 16 classes of a row's
// end (`fill` past them), and for one class
template <typename T>
static inline Floats16 load_adjusted16(const T* logits, const float* adjust, int64_t k) {
  return adjust ? load16(logits + k) + load16(adjust + k) : load16(logits + k);
}

template <typename T>
static inline Floats16 load_adjusted_partial16(const T* logits, const float* adjust, int64_t k, int64_t count,
                                               float fill) {
  const Floats16 values = load_partial16(logits + k, count, fill);
  return adjust ? values + load_partial16(adjust + k, count, 0.0f) : values;
}

template <typename T>
static inline float load_adjusted(const T* logits, const float* adjust, int64_t k) {
  return to_float(logits[k]) + (adjust ? adjust[k] : 0.0f);
}

// max ignoring NaN (a NaN still poisons the sum of exponentials, as in torch)
template <typename T>
static inline float block_max(const T* logits, const float* adjust, int64_t begin, int64_t end) {
  Floats16 lanes = broadcast16(kNegInf);
  int64_t k = begin;
  for (; k + kFloats16 <= end; k += kFloats16) lanes = lane_max(lanes, load_adjusted16(logits, adjust, k));
  if (k < end) lanes = lane_max(lanes, load_adjusted_partial16(logits, adjust, k, end - k, kNegInf));
  return horizontal_max(lanes);
}

// Σ_k exp(z'_k - shift) over [begin, end); with `exps`, each exp(z'_k - shift) is also kept in exps[k]
// (for the gradient of the same row).
template <typename T>
static inline float block_sum_exp(const T* logits, const float* adjust, int64_t begin, int64_t end, float shift,
                                  float* exps = nullptr) {
  Floats16 lanes{};
  int64_t k = begin;
  for (; k + kFloats16 <= end; k += kFloats16) {
    const Floats16 e = exp16(load_adjusted16(logits, adjust, k) - shift);
    if (exps) store16(exps + k, e);
    lanes += e;
  }
  if (k < end) {  // the padding holds -inf: exp gives 0
    const Floats16 e = exp16(load_adjusted_partial16(logits, adjust, k, end - k, kNegInf) - shift);
    if (exps) store_partial16(exps + k, e, end - k);
    lanes += e;
  }
  return horizontal_sum(lanes);
}

// Σ_k v'_k (z'_k - shift), v' = weight or 1
template <typename T>
static inline float block_smooth_sum(const T* logits, const float* adjust, const float* weight, int64_t begin, int64_t end,
                       float shift) {
  Floats16 lanes{};
  int64_t k = begin;
  for (; k + kFloats16 <= end; k += kFloats16) {
    const Floats16 centered = load_adjusted16(logits, adjust, k) - shift;
    lanes += weight ? load16(weight + k) * centered : centered;
  }
  if (k < end) {
    const Floats16 centered = load_adjusted_partial16(logits, adjust, k, end - k, 0.0f) - shift;
    const Floats16 term = weight ? load_partial16(weight + k, end - k, 0.0f) * centered : centered;
    lanes += lanes_below(end - k) ? term : Floats16{};
  }
  return horizontal_sum(lanes);
}

// One row's softmax sums: max = max_k z'_k (-inf when every logit is -inf; NaN is ignored here and
// poisons sum_exp, as in torch), sum_exp = Σ_k exp(z'_k - max) (against 0 when max = -inf),
// smooth_sum = Σ_k v'_k (z'_k - shift) with v' = smooth_weight or 1 (0 without smoothing), where
// shift is the first block's max where finite (else 0): a value near the logits, see cross_entropy_row.
struct RowSoftmaxSums {
  float max, sum_exp, smooth_sum, shift;
};

// One pass over the row in blocks, each block read while it is in cache (online softmax across blocks).
template <typename T>
static inline RowSoftmaxSums row_softmax_sums(const T* row, const float* adjust, const float* smooth_weight,
                                              int64_t classes, bool smoothing) {
  float max = kNegInf, sum_exp = 0.0f, smooth_sum = 0.0f, shift = 0.0f;
  for (int64_t start = 0; start < classes; start += kBlock) {
    const int64_t end = classes - start < kBlock ? classes : start + kBlock;
    const float block_best = block_max(row, adjust, start, end);
    if (start == 0 && std::isfinite(block_best)) shift = block_best;
    if (block_best > max) {  // rescale what was summed against the old max
      if (max != kNegInf) sum_exp *= exp_scalar(max - block_best);
      max = block_best;
    }
    sum_exp += block_sum_exp(row, adjust, start, end, max == kNegInf ? 0.0f : max);
    if (smoothing) smooth_sum += block_smooth_sum(row, adjust, smooth_weight, start, end, shift);
  }
  return {max, sum_exp, smooth_sum, shift};
}

}  // namespace rarekit::cpu
