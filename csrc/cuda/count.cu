// CUDA implementation of rarekit::count.
//  - num_bins <= kSharedBins: per-block histograms in shared memory, flushed once per block;
//  - otherwise global atomics.
// Either way, the lanes of a warp that share a bin add once (warp aggregation), so hot Zipf-head
// bins do not serialize. Indexing is 64-bit. With check=false the op never synchronizes.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "rarekit/count_math.h"
#include "rarekit/torch_utils.h"

namespace rarekit::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSharedBins = 12288;  // 48 KiB of uint32 counters per block

// The lanes of a warp that hold the same bin elect one leader, which adds their number.
template <typename Counter>
__device__ __forceinline__ void warp_aggregated_increment(Counter* hist, int64_t bin) {
  const unsigned peers = __match_any_sync(__activemask(), static_cast<long long>(bin));
  if (bin >= 0 && static_cast<int>(threadIdx.x % 32) == __ffs(peers) - 1) {
    atomicAdd(hist + bin, static_cast<Counter>(__popc(peers)));
  }
}

// kBlockHistogram: count into a shared-memory histogram of num_bins slots, flushed once per block;
// otherwise straight into the global counts.
template <typename Id, bool kBlockHistogram>
__global__ void count_kernel(const Id* __restrict__ ids, int64_t n, int64_t num_bins, bool has_ignore,
                             int64_t ignore_index, unsigned long long* counts, unsigned long long* out_of_range) {
  extern __shared__ unsigned int block_hist[];
  if (kBlockHistogram) {
    for (int64_t bin = threadIdx.x; bin < num_bins; bin += blockDim.x) block_hist[bin] = 0;
    __syncthreads();
  }
  unsigned long long dropped = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t bin = bin_of(ids[i], num_bins, has_ignore, ignore_index);
    dropped += bin == kOutOfRangeId;
    if (kBlockHistogram) {
      warp_aggregated_increment(block_hist, bin);
    } else {
      warp_aggregated_increment(counts, bin);
    }
  }
  if (kBlockHistogram) {
    __syncthreads();
    for (int64_t bin = threadIdx.x; bin < num_bins; bin += blockDim.x) {
      if (block_hist[bin] != 0) atomicAdd(counts + bin, static_cast<unsigned long long>(block_hist[bin]));
    }
  }
  if (dropped != 0) atomicAdd(out_of_range, dropped);
}

template <typename Id, typename Weight>
__global__ void weighted_count_kernel(const Id* __restrict__ ids, const Weight* __restrict__ weights, int64_t n,
                                      int64_t num_bins, bool has_ignore, int64_t ignore_index, double* sums,
                                      unsigned long long* out_of_range) {
  unsigned long long dropped = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t bin = bin_of(ids[i], num_bins, has_ignore, ignore_index);
    dropped += bin == kOutOfRangeId;
    // Weight (float, double, c10::Half, c10::BFloat16) converts to double directly: a float64 weight keeps
    // its 53 bits, as on the CPU (rounding it through float32 lost them).
    if (bin >= 0) atomicAdd(sums + bin, static_cast<double>(weights[i]));
  }
  if (dropped != 0) atomicAdd(out_of_range, dropped);
}

int grid_size(int64_t n) {
  const int64_t resident = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  // at least one block per 2^31 ids keeps the shared uint32 counters from overflowing
  const int64_t needed = std::max<int64_t>((n + kThreads - 1) / kThreads, 1);
  return static_cast<int>(std::min<int64_t>(needed, std::max<int64_t>(resident, n >> 31)));
}

at::Tensor count_cuda(const at::Tensor& ids, int64_t num_bins, std::optional<int64_t> ignore_index,
                      const std::optional<at::Tensor>& weights, bool check) {
  check_count_arguments(ids, num_bins, weights);
  TORCH_CHECK_VALUE(ids.is_cuda(), "rarekit.count: ids must be on a CUDA device here, got ", ids.device());
  const c10::cuda::CUDAGuard guard(ids.device());
  const at::Tensor flat = ids.contiguous().view(-1);
  const int64_t n = flat.numel();
  const bool has_ignore = ignore_index.has_value();
  const int64_t ignore = ignore_index.value_or(0);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor out_of_range = at::zeros({1}, flat.options().dtype(at::kLong));
  auto* dropped = reinterpret_cast<unsigned long long*>(out_of_range.mutable_data_ptr<int64_t>());
  at::Tensor result;
  if (!weights) {
    result = at::zeros({num_bins}, flat.options().dtype(at::kLong));
    auto* counts = reinterpret_cast<unsigned long long*>(result.mutable_data_ptr<int64_t>());
    if (n > 0) {
      RAREKIT_DISPATCH_ID_TYPES(flat.scalar_type(), "rarekit_count_cuda", [&] {
        const auto kernel = num_bins <= kSharedBins ? count_kernel<scalar_t, true> : count_kernel<scalar_t, false>;
        const size_t shared_bytes = num_bins <= kSharedBins ? num_bins * sizeof(unsigned int) : 0;
        kernel<<<grid_size(n), kThreads, shared_bytes, stream>>>(flat.const_data_ptr<scalar_t>(), n, num_bins,
                                                                has_ignore, ignore, counts, dropped);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  } else {
    const at::Tensor flat_weights = weights->contiguous().view(-1);
    // float64 sums: float32 atomics stop growing at 2^24 and would differ from the CPU
    at::Tensor sums = at::zeros({num_bins}, flat.options().dtype(at::kDouble));
    if (n > 0) {
      RAREKIT_DISPATCH_ID_TYPES(flat.scalar_type(), "rarekit_count_cuda", [&] {
        using Id = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, flat_weights.scalar_type(), "rarekit_count_cuda_w", [&] {
          weighted_count_kernel<Id, scalar_t><<<grid_size(n), kThreads, 0, stream>>>(
              flat.const_data_ptr<Id>(), flat_weights.const_data_ptr<scalar_t>(), n, num_bins, has_ignore, ignore,
              sums.mutable_data_ptr<double>(), dropped);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    }
    result = sums.to(result_dtype(flat_weights));
  }
  // the one documented synchronization: only with check=true
  if (check && out_of_range.item<int64_t>() > 0) raise_first_out_of_range(flat, num_bins, ignore_index);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) { m.impl("count", &count_cuda); }

}  // namespace rarekit::cuda
