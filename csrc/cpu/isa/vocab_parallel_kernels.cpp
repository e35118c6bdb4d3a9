// rarekit::vocab_parallel_statistics row kernels, compiled once per ISA (see setup.py): one pass per
// row over the shard's logits, the same pass as the cross-entropy forward (rarekit/cpu_row_reductions.h).
#include <cmath>

#include "rarekit/cpu_row_reductions.h"
#include "rarekit/cpu_vocab_parallel.h"

namespace rarekit::cpu {
namespace {

template <typename T>
void statistics_rows(const VocabParallelArgs& args, int64_t begin, int64_t end) {
  const bool smoothing = args.statistics > 3;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t target = args.target[i];
    VocabParallelPartials<float> partials = vocab_parallel_nothing<float>();
    if (target != args.ignore_index) {
      const T* row = static_cast<const T*>(args.logits) + i * args.classes;
      const RowSoftmaxSums sums = row_softmax_sums(row, args.adjust, args.smooth_weight, args.classes, smoothing);
      const bool owned = owns_class(target, args.vocab_start, args.classes);
      partials = vocab_parallel_partials<float>(
          sums.max, std::log(sums.sum_exp), owned, owned ? load_adjusted(row, args.adjust, target - args.vocab_start) : 0.0f,
          sums.smooth_sum, sums.shift, args.smooth_total);
    }
    store_vocab_parallel_partials(partials, args.out, i, args.rows, args.statistics);
  }
}

}  // namespace

extern const VocabParallelKernels RAREKIT_CAT(VocabParallelKernels, RAREKIT_ISA);
const VocabParallelKernels RAREKIT_CAT(VocabParallelKernels, RAREKIT_ISA) = {
    {statistics_rows<float>, statistics_rows<BFloat16Bits>, statistics_rows<HalfBits>},
};

}  // namespace rarekit::cpu
