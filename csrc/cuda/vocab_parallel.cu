// CUDA operator rarekit::vocab_parallel_statistics: one shard's per-row partials of the
// vocabulary-parallel cross-entropy (csrc/include/rarekit/vocab_parallel_math.h). One block per row,
// the single-process forward's pass (csrc/include/rarekit/cuda_row_reductions.h): no host
// synchronization, no atomics.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "rarekit/cuda_row_reductions.h"
#include "rarekit/vocab_parallel_op.h"

namespace rarekit::cuda {
namespace {

constexpr int kMaxThreads = 512;  // 1024 would cap the registers below what the float64 kernel needs

template <typename T, typename Acc = acc_t<T>>
__global__ __launch_bounds__(kMaxThreads) void statistics_kernel(const T* logits, int64_t rows, int64_t classes,
                                                          const int64_t* targets, int64_t vocab_start,
                                                          int64_t ignore_index, const Acc* adjust,
                                                          const Acc* smooth_weight, const Acc* smooth_total,
                                                          int statistics, Acc* out) {
  const int64_t row_index = blockIdx.x;
  const int64_t target = targets[row_index];
  if (target == ignore_index) {
    if (threadIdx.x == 0) store_vocab_parallel_partials(vocab_parallel_nothing<Acc>(), out, row_index, rows, statistics);
    return;
  }
  const T* row = logits + row_index * classes;
  const bool smoothing = statistics > 3;
  const Acc shift = leading_max(row, adjust, classes);
  SoftmaxState<Acc> state{-INFINITY, Acc(0)};
  Acc smooth_sum = 0;
  for_each_logit(row, classes, [&](int64_t k, Acc logit) {
    const Acc z = adjusted(logit, adjust, k);
    add_logit(state, z);
    if (smoothing) smooth_sum += (smooth_weight ? smooth_weight[k] : Acc(1)) * (z - shift);
  });
  block_reduce(state, smooth_sum);
  if (threadIdx.x != 0) return;
  const bool owned = owns_class(target, vocab_start, classes);
  const int64_t local = owned ? target - vocab_start : 0;
  // sum >= 1 when the max is finite (0 when every logit is -inf: -inf); log1p keeps full precision
  // (fast-math turns logf into __logf)
  const Acc log_sum = log1p(state.sum - Acc(1));
  const VocabParallelPartials<Acc> partials = vocab_parallel_partials<Acc>(
      state.max, log_sum, owned, owned ? adjusted(static_cast<Acc>(row[local]), adjust, local) : Acc(0), smooth_sum,
      shift, smooth_total ? *smooth_total : static_cast<Acc>(classes));
  store_vocab_parallel_partials(partials, out, row_index, rows, statistics);
}

template <typename Acc>
const Acc* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<Acc>() : nullptr;
}

at::Tensor vocab_parallel_statistics_cuda(const at::Tensor& logits, const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight,
                                          const std::optional<at::Tensor>& logit_adjustment, int64_t vocab_start,
                                          int64_t ignore_index, double label_smoothing, bool target_weighted) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const VocabParallelInputs inputs = prepare_vocab_parallel(logits, target, weight, logit_adjustment, vocab_start,
                                                            ignore_index, label_smoothing, target_weighted);
  const int64_t rows = inputs.logits.size(0), classes = inputs.logits.size(1);
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(),
                    "rarekit.vocab_parallel_statistics: at most 2^31-1 rows on CUDA, got ", rows);
  if (rows == 0 || classes == 0) return inputs.out;
  // V' on the device, no synchronization
  const at::Tensor smooth_total = inputs.smooth_weight.defined() ? inputs.smooth_weight.sum() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.logits.scalar_type(), "rarekit_vp_statistics", [&] {
    using Acc = acc_t<scalar_t>;
    statistics_kernel<scalar_t><<<static_cast<unsigned int>(rows), std::min(threads_for(classes), kMaxThreads), 0,
                                  at::cuda::getCurrentCUDAStream()>>>(
        inputs.logits.const_data_ptr<scalar_t>(), rows, classes, inputs.target.const_data_ptr<int64_t>(),
        inputs.vocab_start, inputs.ignore_index, optional_data<Acc>(inputs.adjust),
        optional_data<Acc>(inputs.smooth_weight), optional_data<Acc>(smooth_total), inputs.statistics,
        inputs.out.mutable_data_ptr<Acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return inputs.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) { m.impl("vocab_parallel_statistics", &vocab_parallel_statistics_cuda); }

}  // namespace rarekit::cuda
