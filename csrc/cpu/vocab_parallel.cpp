// CPU operator rarekit::vocab_parallel_statistics: one shard's per-row partials of the
// vocabulary-parallel cross-entropy (csrc/include/rarekit/vocab_parallel_math.h). float32, bf16 and
// fp16 logits take the per-ISA kernels (csrc/cpu/isa/vocab_parallel_kernels.cpp); float64 the scalar
// double pass below.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "rarekit/cpu_float_type.h"
#include "rarekit/cpu_parallel.h"
#include "rarekit/cpu_vocab_parallel.h"
#include "rarekit/torch_utils.h"
#include "rarekit/vocab_parallel_op.h"

namespace rarekit::cpu {

const VocabParallelKernels& vocab_parallel_kernels() {
#if defined(RAREKIT_X86)
  return pick(VocabParallelKernels_baseline, VocabParallelKernels_avx2, VocabParallelKernels_avx512);
#else
  return VocabParallelKernels_baseline;
#endif
}

namespace {

// ---- float64: one scalar pass for the max, one for Σ exp and the smoothing sum.
void statistics_rows_double(const VocabParallelArgsT<double>& args, int64_t begin, int64_t end) {
  const int64_t classes = args.classes;
  const bool smoothing = args.statistics > 3;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t target = args.target[i];
    VocabParallelPartials<double> partials = vocab_parallel_nothing<double>();
    if (target != args.ignore_index) {
      const double* row = static_cast<const double*>(args.logits) + i * classes;
      const auto z = [&](int64_t k) { return row[k] + (args.adjust ? args.adjust[k] : 0.0); };
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < classes; ++k) max = std::max(max, z(k));  // NaN ignored here, poisons Σ exp
      const double offset = max == -std::numeric_limits<double>::infinity() ? 0.0 : max;
      const double shift = std::isfinite(max) ? max : 0.0;
      double sum_exp = 0.0, smooth_sum = 0.0;
      for (int64_t k = 0; k < classes; ++k) {
        sum_exp += std::exp(z(k) - offset);
        if (smoothing) smooth_sum += (args.smooth_weight ? args.smooth_weight[k] : 1.0) * (z(k) - shift);
      }
      const bool owned = owns_class(target, args.vocab_start, classes);
      partials = vocab_parallel_partials<double>(max, std::log(sum_exp), owned,
                                                 owned ? z(target - args.vocab_start) : 0.0, smooth_sum, shift,
                                                 args.smooth_total);
    }
    store_vocab_parallel_partials(partials, args.out, i, args.rows, args.statistics);
  }
}

template <typename Acc, typename Kernel>
void run(const VocabParallelInputs& inputs, Kernel kernel) {
  VocabParallelArgsT<Acc> args{};
  args.logits = inputs.logits.const_data_ptr();
  args.rows = inputs.logits.size(0);
  args.classes = inputs.logits.size(1);
  args.target = inputs.target.const_data_ptr<int64_t>();
  args.vocab_start = inputs.vocab_start;
  args.ignore_index = inputs.ignore_index;
  args.adjust = inputs.adjust.defined() ? inputs.adjust.const_data_ptr<Acc>() : nullptr;
  args.statistics = inputs.statistics;
  args.out = inputs.out.mutable_data_ptr<Acc>();
  double total = static_cast<double>(args.classes);  // V' in double, on the host
  if (inputs.smooth_weight.defined()) {
    args.smooth_weight = inputs.smooth_weight.const_data_ptr<Acc>();
    total = 0.0;
    for (int64_t k = 0; k < args.classes; ++k) total += static_cast<double>(args.smooth_weight[k]);
  }
  args.smooth_total = static_cast<Acc>(total);
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(args.classes, 1));
  parallel_range(0, args.rows, grain, args.classes * inputs.logits.element_size(),
                 [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
}

at::Tensor vocab_parallel_statistics_cpu(const at::Tensor& logits, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         const std::optional<at::Tensor>& logit_adjustment, int64_t vocab_start,
                                         int64_t ignore_index, double label_smoothing, bool target_weighted) {
  const VocabParallelInputs inputs = prepare_vocab_parallel(logits, target, weight, logit_adjustment, vocab_start,
                                                            ignore_index, label_smoothing, target_weighted);
  if (inputs.logits.size(1) == 0 || inputs.logits.size(0) == 0) return inputs.out;
  if (inputs.logits.scalar_type() == at::kDouble) {
    run<double>(inputs, statistics_rows_double);
  } else {
    run<float>(inputs, vocab_parallel_kernels().statistics[float_type(inputs.logits.scalar_type())]);
  }
  return inputs.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) { m.impl("vocab_parallel_statistics", &vocab_parallel_statistics_cpu); }

}  // namespace rarekit::cpu
