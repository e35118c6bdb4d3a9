// CUDA operators of the cross-entropy family. One block per row: 16-byte vector loads, an online
// softmax per thread merged across the block, fp32 accumulation, 64-bit offsets. The per-row loss
// and gradient coefficients come from cross_entropy_row (csrc/include/rarekit/cross_entropy_math.h),
// the same helper the CPU kernels call. No host synchronization unless check=true finds a problem;
// no float atomics: the per-row losses are reduced by the caller in a fixed order.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "rarekit/cross_entropy_op.h"

namespace rarekit::cuda {
namespace {

constexpr int kWarp = 32;

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T values[kSize];
};

int threads_for(int64_t classes) { return classes >= 16384 ? 1024 : (classes >= 2048 ? 512 : 128); }

// Online softmax state: running max and Σ exp(x - max); NaN poisons the sum as in torch.
struct SoftmaxState {
  float max, sum;
};

__device__ __forceinline__ void add_logit(SoftmaxState& state, float x) {
  if (x > state.max) {
    // exp(x - x) is 1, or NaN for x = +inf: a +inf logit makes the row NaN, as in torch
    state.sum = state.sum * __expf(state.max - x) + __expf(x - x);
    state.max = x;
  } else if (x != -INFINITY) {  // NaN lands here and poisons the sum
    state.sum += __expf(x - state.max);
  }
}

__device__ __forceinline__ SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return {max, a.sum + b.sum};
  return {max, a.sum * __expf(a.max - max) + b.sum * __expf(b.max - max)};
}

// Reduces a (softmax state, float sum) pair over the block; every thread gets the result.
__device__ void block_reduce(SoftmaxState& state, float& total) {
  __shared__ SoftmaxState warp_states[1024 / kWarp];
  __shared__ float warp_totals[1024 / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const SoftmaxState other{__shfl_xor_sync(0xffffffffu, state.max, offset),
                             __shfl_xor_sync(0xffffffffu, state.sum, offset)};
    state = merge(state, other);
    total += __shfl_xor_sync(0xffffffffu, total, offset);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) warp_states[warp] = state, warp_totals[warp] = total;
  __syncthreads();
  state = {-INFINITY, 0.0f};
  total = 0.0f;
  for (int w = 0; w < warps; ++w) state = merge(state, warp_states[w]), total += warp_totals[w];
}

__device__ __forceinline__ float adjusted(float logit, const float* adjust, int64_t k) {
  return adjust ? logit + adjust[k] : logit;
}

// The max of the first blockDim logits (0 if not finite): the reference point of the smoothing sum,
// so Σ v (z - shift) does not cancel catastrophically for large or masked (-1e9) logits.
template <typename T>
__device__ float leading_max(const T* row, const float* adjust, int64_t classes) {
  __shared__ float warp_max[1024 / kWarp];
  float best = threadIdx.x < classes ? adjusted(static_cast<float>(row[threadIdx.x]), adjust, threadIdx.x) : -INFINITY;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, offset));
  if (threadIdx.x % kWarp == 0) warp_max[threadIdx.x / kWarp] = best;
  __syncthreads();
  best = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x / kWarp); ++w) best = fmaxf(best, warp_max[w]);
  return isfinite(best) ? best : 0.0f;
}

// Visits (class index, logit as float) of a row with 16-byte loads when the row is aligned.
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_logit(const T* row, int64_t classes, Visit visit) {
  constexpr int kPack = Pack<T>::kSize;
  if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
    const int64_t packs = classes / kPack;
    const auto* packed = reinterpret_cast<const Pack<T>*>(row);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T> pack = packed[p];
#pragma unroll
      for (int j = 0; j < kPack; ++j) visit(p * kPack + j, static_cast<float>(pack.values[j]));
    }
    for (int64_t k = packs * kPack + threadIdx.x; k < classes; k += blockDim.x) visit(k, static_cast<float>(row[k]));
  } else {
    for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) visit(k, static_cast<float>(row[k]));
  }
}

// Writes scale (coef_p p_k - coef_v v'_k - [k = target] coef_y) for a row; out may alias row
// (each element is read and written by the same thread).
template <typename T>
__device__ void write_gradient(const T* row, int64_t target, const CrossEntropyRowTerms& terms, float scale,
                               const float* adjust, const float* smooth_weight, int64_t classes, T* out) {
  const float coef_p = terms.coef_p * scale, coef_v = terms.coef_v * scale, coef_y = terms.coef_y * scale;
  for_each_logit(row, classes, [&](int64_t k, float logit) {
    float grad = coef_p * __expf(adjusted(logit, adjust, k) - terms.max_logit) - coef_v * (smooth_weight ? smooth_weight[k] : 1.0f);
    if (k == target) grad -= coef_y;
    out[k] = static_cast<T>(grad);
  });
}

template <typename T>
__global__ void forward_kernel(const T* logits, const int64_t* targets, const float* weight, const float* adjust,
                               const float* weight_total, CrossEntropyConfig config, float* losses,
                               float* row_terms, T* grad, const float* grad_scale, long long* first_bad_row) {
  const int64_t row_index = blockIdx.x;
  const int64_t classes = config.num_classes;
  const T* row = logits + row_index * classes;
  const int64_t target = targets[row_index];
  const bool ignored = target == config.ignore_index;
  const bool in_range = target >= 0 && target < classes;
  float* saved = row_terms + row_index * kRowTermCount;
  if (ignored || !in_range) {
    if (threadIdx.x == 0) {
      losses[row_index] = ignored ? 0.0f : NAN;  // NaN keeps a bad target from passing silently
      for (int t = 0; t < kRowTermCount; ++t) saved[t] = 0.0f;
      if (!ignored) atomicMin(first_bad_row, static_cast<long long>(row_index));
    }
    if (grad != nullptr) {
      for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) grad[row_index * classes + k] = static_cast<T>(0.0f);
    }
    return;
  }
  if (config.has_weight) config.weight_total = *weight_total;
  const float* smooth_weight = per_class_smoothing(config) ? weight : nullptr;
  const bool smoothing = config.label_smoothing > 0.0f;
  const float shift = leading_max(row, adjust, classes);
  SoftmaxState state{-INFINITY, 0.0f};
  float smooth_sum = 0.0f;
  for_each_logit(row, classes, [&](int64_t k, float logit) {
    const float z = adjusted(logit, adjust, k);
    add_logit(state, z);
    if (smoothing) smooth_sum += (smooth_weight ? smooth_weight[k] : 1.0f) * (z - shift);
  });
  block_reduce(state, smooth_sum);
  // sum >= 1 when the max is finite; log1pf keeps full precision (fast-math turns logf into __logf)
  const float log_sum = log1pf(state.sum - 1.0f);
  CrossEntropyRowTerms terms;
  const float w_y = weight ? weight[target] : 1.0f;
  const float loss = cross_entropy_row(config, state.max == -INFINITY ? 0.0f : state.max, log_sum,
                                       adjusted(static_cast<float>(row[target]), adjust, target), smooth_sum, shift,
                                       w_y, &terms);
  if (threadIdx.x == 0) {
    losses[row_index] = loss;
    saved[0] = terms.max_logit, saved[1] = terms.coef_p, saved[2] = terms.coef_y, saved[3] = terms.coef_v;
  }
  if (grad != nullptr) {
    __syncthreads();  // every read of row[target] is done before the row is overwritten
    write_gradient(row, target, terms, *grad_scale, adjust, smooth_weight, classes, grad + row_index * classes);
  }
}

template <typename T>
__global__ void backward_kernel(const float* grad_losses, const T* logits, const int64_t* targets, const float* weight,
                                const float* adjust, const float* row_terms, CrossEntropyConfig config, T* grad) {
  const int64_t row_index = blockIdx.x;
  const int64_t classes = config.num_classes;
  const int64_t target = targets[row_index];
  T* out = grad + row_index * classes;
  if (target == config.ignore_index || target < 0 || target >= classes) {
    for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) out[k] = static_cast<T>(0.0f);
    return;
  }
  const float* saved = row_terms + row_index * kRowTermCount;
  const CrossEntropyRowTerms terms{saved[0], saved[1], saved[2], saved[3]};
  write_gradient(logits + row_index * classes, target, terms, grad_losses[row_index], adjust,
                 per_class_smoothing(config) ? weight : nullptr, classes, out);
}

const float* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<float>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> forward(const CrossEntropyInputs& inputs, const at::Tensor& grad,
                                           const at::Tensor& grad_scale, bool check) {
  const c10::cuda::CUDAGuard guard(inputs.logits.device());
  const int64_t rows = inputs.logits.size(0);
  at::Tensor losses = at::empty({rows}, inputs.logits.options().dtype(at::kFloat));
  at::Tensor row_terms = at::empty({rows, kRowTermCount}, inputs.logits.options().dtype(at::kFloat));
  at::Tensor first_bad_row = at::full({1}, rows, inputs.logits.options().dtype(at::kLong));
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), "rarekit.cross_entropy: at most 2^31-1 rows on CUDA, got ", rows);
  const at::Tensor scale =
      grad.defined() ? grad_scale.to(inputs.logits.device(), at::kFloat).contiguous() : at::Tensor();
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.logits.scalar_type(), "rarekit_ce_forward", [&] {
      forward_kernel<scalar_t><<<rows, threads_for(inputs.config.num_classes), 0, at::cuda::getCurrentCUDAStream()>>>(
          inputs.logits.const_data_ptr<scalar_t>(), inputs.target.const_data_ptr<int64_t>(),
          optional_data(inputs.weight), optional_data(inputs.adjust),
          optional_data(inputs.weight_total), inputs.config, losses.mutable_data_ptr<float>(),
          row_terms.mutable_data_ptr<float>(), grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
          optional_data(scale), reinterpret_cast<long long*>(first_bad_row.mutable_data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // the one documented synchronization, with check=true only
  if (check && first_bad_row.item<int64_t>() < rows) {
    check_targets(inputs.target, inputs.config.num_classes, inputs.config.ignore_index);
  }
  return {losses, row_terms};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, int64_t ignore_index, double label_smoothing,
    bool target_weighted, double focal_gamma, double z_loss, bool check) {
  return forward(prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index, label_smoothing,
                                       target_weighted, focal_gamma, z_loss),
                 at::Tensor(), at::Tensor(), check);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_inplace_cuda(
    at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const at::Tensor& grad_scale, int64_t ignore_index,
    double label_smoothing, bool target_weighted, double focal_gamma, double z_loss, bool check) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), "rarekit.cross_entropy: inplace_backward needs contiguous logits");
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  if (check) check_targets(inputs.target, inputs.config.num_classes, ignore_index);  // before the overwrite
  return forward(inputs, logits, grad_scale, false);
}

at::Tensor cross_entropy_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& logits,
                                       const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& logit_adjustment, const at::Tensor& row_terms,
                                       int64_t ignore_index, double label_smoothing, bool target_weighted,
                                       double focal_gamma, double z_loss) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  at::Tensor grad = at::empty_like(inputs.logits);
  const at::Tensor upstream = grad_losses.to(at::kFloat).contiguous();
  const at::Tensor terms = row_terms.contiguous();
  const int64_t rows = inputs.logits.size(0);
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), "rarekit.cross_entropy: at most 2^31-1 rows on CUDA, got ", rows);
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.logits.scalar_type(), "rarekit_ce_backward", [&] {
      backward_kernel<scalar_t><<<rows, threads_for(inputs.config.num_classes), 0, at::cuda::getCurrentCUDAStream()>>>(
          upstream.const_data_ptr<float>(), inputs.logits.const_data_ptr<scalar_t>(),
          inputs.target.const_data_ptr<int64_t>(), optional_data(inputs.weight),
          optional_data(inputs.adjust), terms.const_data_ptr<float>(), inputs.config,
          grad.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cuda);
  m.impl("cross_entropy_forward_inplace", &cross_entropy_forward_inplace_cuda);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cuda);
}

}  // namespace rarekit::cuda
