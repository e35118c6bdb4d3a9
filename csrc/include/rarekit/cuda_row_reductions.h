// Device helpers of the CUDA cross-entropy family (csrc/cuda/cross_entropy.cu, vocab_parallel.cu): one
// block per row, 16-byte vector loads, an online softmax per thread merged across the block.
#pragma once
#include <cstdint>

#include "rarekit/cross_entropy_math.h"

namespace rarekit::cuda {
namespace {

constexpr int kWarp = 32;

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T values[kSize];
};

int threads_for(int64_t classes) { return classes >= 16384 ? 1024 : (classes >= 2048 ? 512 : 128); }

// exp of the accumulator type: the fast hardware exp for float, the full-precision one for double.
__device__ __forceinline__ float device_exp(float x) { return __expf(x); }
__device__ __forceinline__ double device_exp(double x) { return exp(x); }

// Online softmax state: running max and Σ exp(x - max); NaN poisons the sum as in torch.
template <typename Acc>
struct SoftmaxState {
  Acc max, sum;
};

template <typename Acc>
__device__ __forceinline__ void add_logit(SoftmaxState<Acc>& state, Acc x) {
  if (x > state.max) {
    // exp(x - x) is 1, or NaN for x = +inf: a +inf logit makes the row NaN, as in torch
    state.sum = state.sum * device_exp(state.max - x) + device_exp(x - x);
    state.max = x;
  } else if (x != -INFINITY) {  // NaN lands here and poisons the sum
    state.sum += device_exp(x - state.max);
  }
}

template <typename Acc>
__device__ __forceinline__ SoftmaxState<Acc> merge(SoftmaxState<Acc> a, SoftmaxState<Acc> b) {
  const Acc max = a.max > b.max ? a.max : b.max;
  if (max == -INFINITY) return {max, a.sum + b.sum};
  return {max, a.sum * device_exp(a.max - max) + b.sum * device_exp(b.max - max)};
}

// Reduces a (softmax state, sum) pair over the block; every thread gets the result.
template <typename Acc>
__device__ void block_reduce(SoftmaxState<Acc>& state, Acc& total) {
  __shared__ SoftmaxState<Acc> warp_states[1024 / kWarp];
  __shared__ Acc warp_totals[1024 / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const SoftmaxState<Acc> other{__shfl_xor_sync(0xffffffffu, state.max, offset),
                                  __shfl_xor_sync(0xffffffffu, state.sum, offset)};
    state = merge(state, other);
    total += __shfl_xor_sync(0xffffffffu, total, offset);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) warp_states[warp] = state, warp_totals[warp] = total;
  __syncthreads();
  state = {-INFINITY, Acc(0)};
  total = Acc(0);
  for (int w = 0; w < warps; ++w) state = merge(state, warp_states[w]), total += warp_totals[w];
}

template <typename Acc>
__device__ __forceinline__ Acc adjusted(Acc logit, const Acc* adjust, int64_t k) {
  return adjust ? logit + adjust[k] : logit;
}

// The max of the first blockDim logits (0 if not finite): the reference point of the smoothing sum,
// so Σ v (z - shift) does not cancel catastrophically for large or masked (-1e9) logits.
template <typename T, typename Acc = acc_t<T>>
__device__ Acc leading_max(const T* row, const Acc* adjust, int64_t classes) {
  __shared__ Acc warp_max[1024 / kWarp];
  Acc best = threadIdx.x < classes ? adjusted(static_cast<Acc>(row[threadIdx.x]), adjust, threadIdx.x) : -INFINITY;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) best = fmax(best, __shfl_xor_sync(0xffffffffu, best, offset));
  if (threadIdx.x % kWarp == 0) warp_max[threadIdx.x / kWarp] = best;
  __syncthreads();
  best = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) best = fmax(best, warp_max[w]);
  return isfinite(best) ? best : Acc(0);
}

// Visits (class index, logit in the accumulator type) of a row with 16-byte loads when the row is aligned.
template <typename T, typename Visit, typename Acc = acc_t<T>>
__device__ __forceinline__ void for_each_logit(const T* row, int64_t classes, Visit visit) {
  constexpr int kPack = Pack<T>::kSize;
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    const int64_t packs = classes / kPack;
    const auto* packed = reinterpret_cast<const Pack<T>*>(row);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T> pack = packed[p];
#pragma unroll
      for (int j = 0; j < kPack; ++j) visit(p * kPack + j, static_cast<Acc>(pack.values[j]));
    }
    for (int64_t k = packs * kPack + threadIdx.x; k < classes; k += blockDim.x) visit(k, static_cast<Acc>(row[k]));
  } else {
    for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) visit(k, static_cast<Acc>(row[k]));
  }
}

}  // namespace
}  // namespace rarekit::cuda
