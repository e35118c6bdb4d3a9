// CUDA implementations of the resampling index ops. Neither synchronizes with the host.
//  - class_buckets: the stable scatter of the counting sort, done as a stable sort — torch's radix sort
//    (at::sort with stable=true, CUB underneath) of the codes, out-of-range codes mapped past the last
//    class — and the offsets by binary search of each class in the sorted codes (at::searchsorted).
//  - draw_from_buckets: one thread per output, which finds its bucket by binary search over the prefix
//    sums of draw_counts and draws as the CPU does (rarekit/sampling_math.h), so both devices give the
//    same indices. Without replacement, the positions are first ranked by (bucket, random_key, position)
//    with two stable sorts, O(N) radix passes.
// Checking the arguments against each other (checked_draw_ends, as on the CPU, with the same ValueError)
// needs offsets and draw_counts on the host: with check=true (the default) they are copied there, one
// synchronization of 2B + 1 int64. With check=false nothing synchronizes and nothing is read out of
// bounds: an output whose bucket or draw falls outside order gets kInvalidDraw (INT64_MIN), which every
// torch index op rejects, never an index of another row; when draw_counts sums to more than the
// outputs, the last buckets get fewer draws.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "rarekit/sampling_math.h"
#include "rarekit/sampling_op.h"

namespace rarekit::cuda {
namespace {

constexpr int kThreads = 256;

int grid_size(int64_t n) {
  const int64_t resident = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, resident)));
}

__global__ void draw_with_replacement_kernel(const int64_t* __restrict__ order, int64_t n,
                                             const int64_t* __restrict__ offsets, const int64_t* __restrict__ ends,
                                             int64_t buckets, uint64_t base, int64_t total, int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += stride) {
    const int64_t b = bucket_of(ends, buckets, j);
    int64_t value = kInvalidDraw;
    if (b < buckets) {
      const int64_t start = offsets[b], size = offsets[b + 1] - start;
      if (size > 0) {
        const int64_t position = start + bounded(random_bits(base, j), size);
        if (position >= 0 && position < n) value = order[position];
      }
    }
    out[j] = value;
  }
}

__global__ void random_keys_kernel(const int64_t* __restrict__ order, int64_t n, uint64_t base,
                                   int64_t* __restrict__ keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += stride) {
    keys[p] = random_key(base, order[p]);
  }
}

// ranked: the positions of order sorted by (bucket, random_key, position).
__global__ void draw_without_replacement_kernel(const int64_t* __restrict__ order, int64_t n,
                                                const int64_t* __restrict__ offsets,
                                                const int64_t* __restrict__ draw_counts,
                                                const int64_t* __restrict__ ends, int64_t buckets,
                                                const int64_t* __restrict__ ranked, int64_t total,
                                                int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += stride) {
    const int64_t b = bucket_of(ends, buckets, j);
    int64_t value = kInvalidDraw;
    if (b < buckets) {
      const int64_t start = offsets[b], size = offsets[b + 1] - start, kept = draw_counts[b];
      const int64_t rank = j - (ends[b] - kept);
      const int64_t slot = start + rank;
      if (rank >= 0 && rank < size && slot >= 0 && slot < n) {
        const int64_t position = kept == size ? slot : ranked[slot];  // a bucket drawn in full keeps its order
        if (position >= 0 && position < n) value = order[position];
      }
    }
    out[j] = value;
  }
}

std::tuple<at::Tensor, at::Tensor> class_buckets_cuda(const at::Tensor& codes, int64_t num_classes) {
  check_bucket_arguments(codes, num_classes);
  const c10::cuda::CUDAGuard guard(codes.device());
  const at::Tensor wide = codes.to(at::kLong);
  at::Tensor buckets = at::where(wide.ge(0).logical_and(wide.lt(num_classes)), wide, num_classes);
  if (num_classes < std::numeric_limits<int32_t>::max()) buckets = buckets.to(at::kInt);  // half the radix passes
  const auto [sorted, order] = at::sort(buckets, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor offsets = at::searchsorted(sorted, at::arange(num_classes + 1, sorted.options()));
  return {order, offsets};
}

void draw_from_buckets_into_cuda(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                                 int64_t seed, bool replacement, const at::Tensor& out, bool check) {
  check_draw_arguments(order, offsets, draw_counts, out);
  TORCH_CHECK_VALUE(order.is_cuda(), "rarekit.draw_from_buckets: order must be on a CUDA device here, got ",
                    order.device());
  const c10::cuda::CUDAGuard guard(order.device());
  const at::Tensor order_c = order.contiguous(), offsets_c = offsets.contiguous(), counts_c = draw_counts.contiguous();
  const int64_t n = order_c.numel(), buckets = counts_c.numel(), total = out.numel();
  if (check) {  // the one documented synchronization
    const at::Tensor host = at::cat({offsets_c, counts_c}).cpu();
    checked_draw_ends(host.const_data_ptr<int64_t>(), host.const_data_ptr<int64_t>() + buckets + 1, buckets, n, total,
                      replacement);
  }
  if (total == 0) return;
  const at::Tensor ends = at::cumsum(counts_c, 0);
  const uint64_t base = stream_base(seed);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (replacement) {
    draw_with_replacement_kernel<<<grid_size(total), kThreads, 0, stream>>>(
        order_c.const_data_ptr<int64_t>(), n, offsets_c.const_data_ptr<int64_t>(), ends.const_data_ptr<int64_t>(),
        buckets, base, total, out.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  at::Tensor keys = at::empty({n}, order.options());
  if (n > 0) {
    random_keys_kernel<<<grid_size(n), kThreads, 0, stream>>>(order_c.const_data_ptr<int64_t>(), n, base,
                                                               keys.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor by_key = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor bucket_of_position =
      at::searchsorted(offsets_c.slice(0, 1), by_key, /*out_int32=*/false, /*right=*/true);
  const at::Tensor ranked = by_key.index_select(
      0, std::get<1>(at::sort(bucket_of_position, /*stable=*/true, /*dim=*/0, /*descending=*/false)));
  draw_without_replacement_kernel<<<grid_size(total), kThreads, 0, stream>>>(
      order_c.const_data_ptr<int64_t>(), n, offsets_c.const_data_ptr<int64_t>(), counts_c.const_data_ptr<int64_t>(),
      ends.const_data_ptr<int64_t>(), buckets, ranked.const_data_ptr<int64_t>(), total, out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor draw_from_buckets_cuda(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                                  int64_t total, int64_t seed, bool replacement, bool check) {
  TORCH_CHECK_VALUE(total >= 0, "rarekit.draw_from_buckets: total must be >= 0, got ", total);
  at::Tensor out = at::empty({total}, order.options());
  draw_from_buckets_into_cuda(order, offsets, draw_counts, seed, replacement, out, check);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) {
  m.impl("class_buckets", &class_buckets_cuda);
  m.impl("draw_from_buckets", &draw_from_buckets_cuda);
  m.impl("draw_from_buckets_into", &draw_from_buckets_into_cuda);
}

}  // namespace rarekit::cuda
