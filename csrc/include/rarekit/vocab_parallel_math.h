// The vocabulary-parallel cross-entropy's per-shard row partials, shared by the CPU (per-ISA) and
// CUDA kernels of rarekit::vocab_parallel_statistics (rarekit/distributed/_statistics.py combines
// the ranks' partials into the row terms of cross_entropy_math.h).
//
// Rank r holds the logits z'_k = z_k + a_k of the classes [start_r, start_r + V_r). One pass over a
// row gives, as the single-process kernels' pass does, c = max_k z'_k, Σ_k exp(z'_k - c) and
// Σ_k v'_k (z'_k - shift) (shift: a value near the logits, see cross_entropy_row); the row sends
//   m = c                                     (-inf where every logit is -inf: a masked shard)
//   log s = log Σ_k exp(z'_k - c)             (-inf on a masked shard)
//   d = z'_y - c                              where this shard owns the target y (0 elsewhere)
//   p = Σ_k v'_k (lse_r - z'_k) = V' ((c - shift) + log s) - Σ_k v'_k (z'_k - shift),
//       V' = Σ_k v'_k over the shard           (label smoothing only; +inf on a masked shard)
// An ignored row, or an empty shard, sends (-inf, 0, 0, 0): it adds nothing to the combination.
#pragma once
#include <cmath>

#include "rarekit/common.h"

namespace rarekit {

constexpr int kVocabParallelStatistics = 4;  // rows of the block with label smoothing (3 without)

template <typename Acc>
struct VocabParallelPartials {
  Acc max, log_sum, target_offset, smooth;
};

// Whether the shard [vocab_start, vocab_start + classes) owns global class `target` (no overflow for
// any int64 target); its local index is then target - vocab_start.
RAREKIT_HOST_DEVICE bool owns_class(int64_t target, int64_t vocab_start, int64_t classes) {
  return target >= vocab_start && target - vocab_start < classes;
}

// The partials of one row from its pass: max and log_sum (max = -inf on a masked shard),
// target_logit = z'_y where owned, smooth_sum_shifted = Σ v'_k (z'_k - shift), smooth_total = V'.
template <typename Acc>
RAREKIT_HOST_DEVICE VocabParallelPartials<Acc> vocab_parallel_partials(Acc max, Acc log_sum, bool owned,
                                                                       Acc target_logit, Acc smooth_sum_shifted,
                                                                       Acc shift, Acc smooth_total) {
  if (max == -static_cast<Acc>(INFINITY)) {  // every logit of the shard is -inf
    return {max, max, owned ? target_logit : Acc(0), static_cast<Acc>(INFINITY)};
  }
  return {max, log_sum, owned ? target_logit - max : Acc(0),
          smooth_total * ((max - shift) + log_sum) - smooth_sum_shifted};
}

// The partials of an ignored row or of a row of an empty shard.
template <typename Acc>
RAREKIT_HOST_DEVICE VocabParallelPartials<Acc> vocab_parallel_nothing() {
  return {-static_cast<Acc>(INFINITY), Acc(0), Acc(0), Acc(0)};
}

// Writes the partials of row `row` into the (statistics, rows) block `out` (statistics = 3 or 4).
template <typename Acc>
RAREKIT_HOST_DEVICE void store_vocab_parallel_partials(const VocabParallelPartials<Acc>& partials, Acc* out,
                                                       int64_t row, int64_t rows, int statistics) {
  out[row] = partials.max;
  out[rows + row] = partials.log_sum;
  out[2 * rows + row] = partials.target_offset;
  if (statistics > 3) out[3 * rows + row] = partials.smooth;
}

}  // namespace rarekit
