// CUDA operators of the cross-entropy family. Few classes (C <= 64): a group of threads per row,
// several rows per warp (below). Otherwise one block per row: 16-byte vector loads, an online
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
#include "rarekit/cuda_row_reductions.h"

namespace rarekit::cuda {
namespace {

// z'_k: the adjusted logit, less the target margin m_y on the target's column (margin_y = 0 without
// target_margin). A per-column select: the target's term is summed as z'_y itself, never corrected after.
template <typename Acc>
__device__ __forceinline__ Acc margined(Acc logit, const Acc* adjust, int64_t k, int64_t target, Acc margin_y) {
  const Acc z = adjusted(logit, adjust, k);
  return k == target ? z - margin_y : z;
}

// Writes scale (coef_p p_k - coef_v v'_k - [k = target] coef_y) for a row; out may alias row
// (each element is read and written by the same thread).
template <typename T, typename Acc = acc_t<T>>
__device__ void write_gradient(const T* row, int64_t target, const CrossEntropyRowTerms<Acc>& terms, Acc scale,
                               const Acc* adjust, Acc margin_y, const Acc* smooth_weight, int64_t classes, T* out) {
  const Acc coef_p = terms.coef_p * scale, coef_v = terms.coef_v * scale, coef_y = terms.coef_y * scale;
  for_each_logit(row, classes, [&](int64_t k, Acc logit) {
    Acc grad = coef_p * device_exp(margined(logit, adjust, k, target, margin_y) - terms.max_logit) -
               coef_v * (smooth_weight ? smooth_weight[k] : Acc(1));
    if (k == target) grad -= coef_y;
    out[k] = static_cast<T>(grad);
  });
}

template <typename T, typename Acc = acc_t<T>>
__global__ void forward_kernel(const T* logits, const int64_t* targets, const Acc* weight, const Acc* adjust,
                               const Acc* margin, const Acc* weight_total, CrossEntropyConfig config, Acc* losses,
                               Acc* row_terms, T* grad, const Acc* grad_scale, long long* first_bad_row) {
  const int64_t row_index = blockIdx.x;
  const int64_t classes = config.num_classes;
  const T* row = logits + row_index * classes;
  const int64_t target = targets[row_index];
  const bool ignored = target == config.ignore_index;
  const bool in_range = target >= 0 && target < classes;
  Acc* saved = row_terms + row_index * kRowTermCount;
  if (ignored || !in_range) {
    if (threadIdx.x == 0) {
      losses[row_index] = ignored ? Acc(0) : Acc(NAN);  // NaN keeps a bad target from passing silently
      for (int t = 0; t < kRowTermCount; ++t) saved[t] = Acc(0);
      if (!ignored) atomicMin(first_bad_row, static_cast<long long>(row_index));
    }
    if (grad != nullptr) {
      for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) grad[row_index * classes + k] = static_cast<T>(0.0f);
    }
    return;
  }
  if (config.has_weight) config.weight_total = *weight_total;
  const Acc* smooth_weight = per_class_smoothing(config) ? weight : nullptr;
  const bool smoothing = config.label_smoothing > 0.0;
  const Acc shift = leading_max(row, adjust, classes);
  const Acc margin_y = margin ? margin[target] : Acc(0);
  SoftmaxState<Acc> state{-INFINITY, Acc(0)};
  Acc smooth_sum = 0;
  for_each_logit(row, classes, [&](int64_t k, Acc logit) {
    const Acc z = margined(logit, adjust, k, target, margin_y);
    add_logit(state, z);
    if (smoothing) smooth_sum += (smooth_weight ? smooth_weight[k] : Acc(1)) * (z - shift);
  });
  block_reduce(state, smooth_sum);
  // sum >= 1 when the max is finite; log1p keeps full precision (fast-math turns logf into __logf)
  const Acc log_sum = log1p(state.sum - Acc(1));
  CrossEntropyRowTerms<Acc> terms;
  const Acc w_y = weight ? weight[target] : Acc(1);
  const Acc loss = cross_entropy_row<Acc>(config, state.max == -INFINITY ? Acc(0) : state.max, log_sum,
                                          adjusted(static_cast<Acc>(row[target]), adjust, target) - margin_y,
                                          smooth_sum, shift, w_y, &terms);
  if (threadIdx.x == 0) {
    losses[row_index] = loss;
    saved[0] = terms.max_logit, saved[1] = terms.coef_p, saved[2] = terms.coef_y, saved[3] = terms.coef_v;
  }
  if (grad != nullptr) {
    __syncthreads();  // every read of row[target] is done before the row is overwritten
    write_gradient(row, target, terms, *grad_scale, adjust, margin_y, smooth_weight, classes,
                   grad + row_index * classes);
  }
}

template <typename T, typename Acc = acc_t<T>>
__global__ void backward_kernel(const Acc* grad_losses, const T* logits, const int64_t* targets, const Acc* weight,
                                const Acc* adjust, const Acc* margin, const Acc* row_terms, CrossEntropyConfig config,
                                T* grad) {
  const int64_t row_index = blockIdx.x;
  const int64_t classes = config.num_classes;
  const int64_t target = targets[row_index];
  T* out = grad + row_index * classes;
  if (target == config.ignore_index || target < 0 || target >= classes) {
    for (int64_t k = threadIdx.x; k < classes; k += blockDim.x) out[k] = static_cast<T>(0.0f);
    return;
  }
  const Acc* saved = row_terms + row_index * kRowTermCount;
  const CrossEntropyRowTerms<Acc> terms{saved[0], saved[1], saved[2], saved[3]};
  write_gradient(logits + row_index * classes, target, terms, grad_losses[row_index], adjust,
                 margin ? margin[target] : Acc(0), per_class_smoothing(config) ? weight : nullptr, classes, out);
}

// ---- Few classes (C <= kFewClasses): a group of `group` threads of one warp per row (a power of two,
// about C/2 threads, so a warp covers several rows), the row's max and sums reduced by shuffles
// within the group; no shared memory, no block barrier. Every thread of a warp runs the same path
// (rows past the end and ignored rows included), so the shuffles and __syncwarp see the whole warp.
constexpr int64_t kFewClasses = 64;
constexpr int kFewThreads = 256;

int few_class_group(int64_t classes) {
  int group = 1;
  while (group < 32 && 2 * group < classes) group *= 2;
  return group;
}

template <typename Acc>
__device__ __forceinline__ Acc group_max(Acc value, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) value = fmax(value, __shfl_xor_sync(0xffffffffu, value, offset, group));
  return value;
}

template <typename Acc>
__device__ __forceinline__ Acc group_sum(Acc value, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset, group);
  return value;
}

// This thread's classes of a row's gradient: scale (coef_p p_k - coef_v v'_k - [k = target] coef_y), or 0
// where the row has no valid target.
template <typename T, typename Acc>
__device__ __forceinline__ void few_class_gradient(const T* row, int64_t target, bool valid,
                                                   const CrossEntropyRowTerms<Acc>& terms, Acc scale, const Acc* adjust,
                                                   Acc margin_y, const Acc* smooth_weight, int64_t classes, int lane,
                                                   int group, T* out) {
  const Acc coef_p = terms.coef_p * scale, coef_v = terms.coef_v * scale, coef_y = terms.coef_y * scale;
  for (int64_t k = lane; k < classes; k += group) {
    Acc grad = Acc(0);
    if (valid) {
      grad = coef_p * device_exp(margined(static_cast<Acc>(row[k]), adjust, k, target, margin_y) - terms.max_logit) -
             coef_v * (smooth_weight ? smooth_weight[k] : Acc(1));
      if (k == target) grad -= coef_y;
    }
    out[k] = static_cast<T>(grad);
  }
}

template <typename T, typename Acc = acc_t<T>>
__global__ __launch_bounds__(kFewThreads) void few_class_forward_kernel(
    const T* logits, const int64_t* targets, const Acc* weight, const Acc* adjust, const Acc* margin,
    const Acc* weight_total, CrossEntropyConfig config, int64_t rows, int group, Acc* losses, Acc* row_terms, T* grad,
    const Acc* grad_scale, long long* first_bad_row) {
  const int64_t row_index = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / group;
  const int lane = threadIdx.x % group;
  const int64_t classes = config.num_classes;
  const bool active = row_index < rows;
  const int64_t target = active ? targets[row_index] : config.ignore_index;
  const bool ignored = target == config.ignore_index, valid = active && !ignored && target >= 0 && target < classes;
  const T* row = logits + (active ? row_index : 0) * classes;
  if (config.has_weight) config.weight_total = *weight_total;
  const Acc* smooth_weight = per_class_smoothing(config) ? weight : nullptr;
  const Acc margin_y = margin && valid ? margin[target] : Acc(0);
  Acc max = -INFINITY;
  for (int64_t k = lane; valid && k < classes; k += group) {
    max = fmax(max, margined(static_cast<Acc>(row[k]), adjust, k, target, margin_y));
  }
  max = group_max(max, group);  // NaN ignored here; it poisons the sum below, as in torch
  const Acc shift = isfinite(max) ? max : Acc(0);
  const Acc offset = max == -INFINITY ? Acc(0) : max;
  Acc sum = 0, smooth_sum = 0;
  for (int64_t k = lane; valid && k < classes; k += group) {
    const Acc z = margined(static_cast<Acc>(row[k]), adjust, k, target, margin_y);
    sum += device_exp(z - offset);
    if (config.label_smoothing > 0.0) smooth_sum += (smooth_weight ? smooth_weight[k] : Acc(1)) * (z - shift);
  }
  sum = group_sum(sum, group);
  smooth_sum = group_sum(smooth_sum, group);
  CrossEntropyRowTerms<Acc> terms{Acc(0), Acc(0), Acc(0), Acc(0)};
  Acc loss = ignored ? Acc(0) : Acc(NAN);  // NaN keeps a bad target from passing silently
  if (valid) {
    // sum >= 1 when the max is finite; log1p keeps full precision (fast-math turns logf into __logf)
    loss = cross_entropy_row<Acc>(config, offset, log1p(sum - Acc(1)),
                                  adjusted(static_cast<Acc>(row[target]), adjust, target) - margin_y, smooth_sum,
                                  shift, weight ? weight[target] : Acc(1), &terms);
  }
  if (active && lane == 0) {
    losses[row_index] = loss;
    Acc* saved = row_terms + row_index * kRowTermCount;
    saved[0] = terms.max_logit, saved[1] = terms.coef_p, saved[2] = terms.coef_y, saved[3] = terms.coef_v;
    if (!ignored && !valid) atomicMin(first_bad_row, static_cast<long long>(row_index));
  }
  if (grad != nullptr) {
    __syncwarp();  // every read of the row is done before it is overwritten
    if (active) {
      few_class_gradient(row, target, valid, terms, *grad_scale, adjust, margin_y, smooth_weight, classes, lane,
                         group, grad + row_index * classes);
    }
  }
}

template <typename T, typename Acc = acc_t<T>>
__global__ __launch_bounds__(kFewThreads) void few_class_backward_kernel(
    const Acc* grad_losses, const T* logits, const int64_t* targets, const Acc* weight, const Acc* adjust,
    const Acc* margin, const Acc* row_terms, CrossEntropyConfig config, int64_t rows, int group, T* grad) {
  const int64_t row_index = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / group;
  if (row_index >= rows) return;  // no shuffles below
  const int64_t classes = config.num_classes, target = targets[row_index];
  const bool valid = target != config.ignore_index && target >= 0 && target < classes;
  const Acc* saved = row_terms + row_index * kRowTermCount;
  const CrossEntropyRowTerms<Acc> terms{saved[0], saved[1], saved[2], saved[3]};
  few_class_gradient(logits + row_index * classes, target, valid, terms, grad_losses[row_index], adjust,
                     margin && valid ? margin[target] : Acc(0), per_class_smoothing(config) ? weight : nullptr,
                     classes, static_cast<int>(threadIdx.x) % group, group, grad + row_index * classes);
}

// Blocks of kFewThreads threads that give every row its group.
unsigned int few_class_blocks(int64_t rows, int group) {
  return static_cast<unsigned int>((rows * group + kFewThreads - 1) / kFewThreads);
}

template <typename Acc>
const Acc* optional_data(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<Acc>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> forward(const CrossEntropyInputs& inputs, const at::Tensor& grad,
                                           const at::Tensor& grad_scale, bool check) {
  const c10::cuda::CUDAGuard guard(inputs.logits.device());
  const int64_t rows = inputs.logits.size(0);
  const auto options = inputs.logits.options().dtype(accumulator_type(inputs.logits));
  at::Tensor losses = at::empty({rows}, options);
  at::Tensor row_terms = at::empty({rows, kRowTermCount}, options);
  at::Tensor first_bad_row = at::full({1}, rows, inputs.logits.options().dtype(at::kLong));
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), "rarekit.cross_entropy: at most 2^31-1 rows on CUDA, got ", rows);
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.logits.scalar_type(), "rarekit_ce_forward", [&] {
      using Acc = acc_t<scalar_t>;
      const int64_t classes = inputs.config.num_classes;
      if (classes <= kFewClasses) {
        const int group = few_class_group(classes);
        few_class_forward_kernel<scalar_t><<<few_class_blocks(rows, group), kFewThreads, 0,
                                             at::cuda::getCurrentCUDAStream()>>>(
            inputs.logits.const_data_ptr<scalar_t>(), inputs.target.const_data_ptr<int64_t>(),
            optional_data<Acc>(inputs.weight), optional_data<Acc>(inputs.adjust), optional_data<Acc>(inputs.margin),
            optional_data<Acc>(inputs.weight_total), inputs.config, rows, group, losses.mutable_data_ptr<Acc>(),
            row_terms.mutable_data_ptr<Acc>(), grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
            optional_data<Acc>(grad_scale), reinterpret_cast<long long*>(first_bad_row.mutable_data_ptr<int64_t>()));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      forward_kernel<scalar_t><<<rows, threads_for(inputs.config.num_classes), 0, at::cuda::getCurrentCUDAStream()>>>(
          inputs.logits.const_data_ptr<scalar_t>(), inputs.target.const_data_ptr<int64_t>(),
          optional_data<Acc>(inputs.weight), optional_data<Acc>(inputs.adjust), optional_data<Acc>(inputs.margin),
          optional_data<Acc>(inputs.weight_total), inputs.config, losses.mutable_data_ptr<Acc>(),
          row_terms.mutable_data_ptr<Acc>(), grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr,
          optional_data<Acc>(grad_scale), reinterpret_cast<long long*>(first_bad_row.mutable_data_ptr<int64_t>()));
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
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    int64_t ignore_index, double label_smoothing, bool target_weighted, double focal_gamma, double z_loss,
    bool check) {
  return forward(prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index,
                                       label_smoothing, target_weighted, focal_gamma, z_loss),
                 at::Tensor(), at::Tensor(), check);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_inplace_cuda(
    at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    const at::Tensor& grad_scale, int64_t ignore_index, double label_smoothing, bool target_weighted,
    double focal_gamma, double z_loss, bool check) {
  const CrossEntropyInputs inputs =
      prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index, label_smoothing,
                            target_weighted, focal_gamma, z_loss);
  TORCH_CHECK_VALUE(logits.is_contiguous(), "rarekit.cross_entropy: inplace_backward needs contiguous logits");
  const at::Tensor scale = row_vector(grad_scale, "grad_scale", {1}, logits);
  if (check) check_targets(inputs.target, inputs.config.num_classes, ignore_index);  // before the overwrite
  return forward(inputs, logits, scale, false);
}

at::Tensor cross_entropy_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& logits,
                                       const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& logit_adjustment,
                                       const std::optional<at::Tensor>& target_margin, const at::Tensor& row_terms,
                                       int64_t ignore_index, double label_smoothing, bool target_weighted,
                                       double focal_gamma, double z_loss) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CrossEntropyInputs inputs =
      prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index, label_smoothing,
                            target_weighted, focal_gamma, z_loss);
  const int64_t rows = inputs.logits.size(0);
  const at::Tensor upstream = row_vector(grad_losses, "grad_losses", {rows}, logits);
  const at::Tensor terms = row_vector(row_terms, "row_terms", {rows, kRowTermCount}, logits, true);
  at::Tensor grad = at::empty_like(inputs.logits);
  TORCH_CHECK_VALUE(rows <= std::numeric_limits<int32_t>::max(), "rarekit.cross_entropy: at most 2^31-1 rows on CUDA, got ", rows);
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.logits.scalar_type(), "rarekit_ce_backward", [&] {
      using Acc = acc_t<scalar_t>;
      const int64_t classes = inputs.config.num_classes;
      if (classes <= kFewClasses) {
        const int group = few_class_group(classes);
        few_class_backward_kernel<scalar_t><<<few_class_blocks(rows, group), kFewThreads, 0,
                                              at::cuda::getCurrentCUDAStream()>>>(
            upstream.const_data_ptr<Acc>(), inputs.logits.const_data_ptr<scalar_t>(),
            inputs.target.const_data_ptr<int64_t>(), optional_data<Acc>(inputs.weight),
            optional_data<Acc>(inputs.adjust), optional_data<Acc>(inputs.margin), terms.const_data_ptr<Acc>(),
            inputs.config, rows, group,
            grad.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
      backward_kernel<scalar_t><<<rows, threads_for(inputs.config.num_classes), 0, at::cuda::getCurrentCUDAStream()>>>(
          upstream.const_data_ptr<Acc>(), inputs.logits.const_data_ptr<scalar_t>(),
          inputs.target.const_data_ptr<int64_t>(), optional_data<Acc>(inputs.weight),
          optional_data<Acc>(inputs.adjust), optional_data<Acc>(inputs.margin), terms.const_data_ptr<Acc>(),
          inputs.config, grad.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad;
}

// The reduced loss and its gradient: torch's "mean" divisor Σ w_y over the non-ignored rows (on the device,
// no sync), then the forward kernels with the gradient written into a fresh buffer, scaled by 1/Σ w_y.
std::tuple<at::Tensor, at::Tensor> cross_entropy_reduced_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    const std::optional<at::Tensor>& sample_weight,
    int64_t ignore_index, double label_smoothing, bool target_weighted, double focal_gamma, double z_loss,
    int64_t reduction, bool compute_grad, bool check) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  const at::Tensor sample = reduced_sample_weight(sample_weight, reduction, logits);
  const int64_t classes = inputs.config.num_classes;
  const auto accumulator = inputs.logits.options().dtype(accumulator_type(inputs.logits));
  const at::Tensor valid =
      inputs.target.ne(ignore_index).logical_and_(inputs.target.ge(0)).logical_and_(inputs.target.lt(classes));
  at::Tensor divisor;
  if (inputs.weight.defined()) {  // Σ_i w_{y_i} in double, as the CPU operator
    const at::Tensor gathered = inputs.weight.to(at::kDouble).index_select(0, inputs.target.clamp(0, std::max<int64_t>(classes - 1, 0)));
    divisor = at::where(valid, gathered, at::zeros({}, gathered.options())).sum();
  } else {
    divisor = valid.sum().to(at::kDouble);
  }
  const bool mean = reduction == kReduceMean;
  const at::Tensor scale = (mean ? divisor.reciprocal() : at::ones({}, divisor.options())).to(accumulator.dtype()).reshape({1});
  at::Tensor grad = compute_grad ? at::empty_like(inputs.logits) : at::empty({0}, inputs.logits.options());
  auto [losses, row_terms] = forward(inputs, compute_grad ? grad : at::Tensor(), scale, check);
  if (sample.defined()) {
    losses = losses * sample;
    if (compute_grad) grad.mul_(sample.unsqueeze(1));
  }
  at::Tensor total = losses.to(at::kDouble).sum();
  // "mean": Σ / Σ w_y, and NaN when Σ w_y = 0 (torch divides its nll and smoothing sums separately: 0/0)
  if (mean) total = at::where(divisor.eq(0), at::full({}, std::numeric_limits<double>::quiet_NaN(), divisor.options()), total / divisor);
  return {total.to(logits.scalar_type()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cuda);
  m.impl("cross_entropy_forward_inplace", &cross_entropy_forward_inplace_cuda);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cuda);
  m.impl("cross_entropy_reduced", &cross_entropy_reduced_cuda);
}

}  // namespace rarekit::cuda
