// CUDA operators of the sigmoid loss family: one grid-stride pass over the elements through
// sigmoid_element (csrc/include/rarekit/sigmoid_math.h), the helper the CPU kernels call, writing the
// losses and/or gradients it is given pointers for. A reduced loss is summed per block (fp32 per
// thread, fp64 across the block) and the block sums are added by at::sum in a fixed order: no atomics,
// no host synchronization (the backward reads the upstream gradient from device memory).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "rarekit/sigmoid_op.h"

namespace rarekit::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// One pass over the elements of `args` (input and outputs of dtype T). The gradients' scale is
// args.grad_scale, times grad_scale[0] (read on the device) when given. block_sums, when given, gets
// each block's loss sum.
template <typename T, typename Acc>
__global__ __launch_bounds__(kThreads) void sigmoid_loss_kernel(const SigmoidArgsT<Acc> args, const Acc* grad_scale,
                                                                double* block_sums) {
  const SigmoidPointers<T> data = typed_pointers<T>(args);
  const bool grads = data.grad_input != nullptr || data.grad_target != nullptr;
  const bool has_alpha = args.alpha.kind != kOperandNone;
  bool needs_row_col = false;
  for (const int kind : {args.weight.kind, args.pos_weight.kind, args.alpha.kind}) {
    needs_row_col |= kind == kOperandColumn || kind == kOperandRow;
  }
  const Acc scale = grad_scale ? *grad_scale * args.grad_scale : args.grad_scale;
  const int64_t elements = args.rows * args.cols;
  Acc total = Acc(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t position = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; position < elements;
       position += stride) {
    int64_t row = 0, col = 0;
    if (needs_row_col) {
      row = position / args.cols;
      col = position - row * args.cols;
    }
    Acc a_pos, a_neg;
    alpha_factors<Acc, Acc>(has_alpha, operand_value(args.alpha, row, col, position), &a_pos, &a_neg);
    const SigmoidTerms<Acc> terms = sigmoid_element<ScalarMath, Acc>(
        args.params, static_cast<Acc>(data.input[position]), static_cast<Acc>(data.target[position]),
        operand_value(args.weight, row, col, position), operand_value(args.pos_weight, row, col, position), a_pos,
        a_neg, grads);
    if (data.losses) data.losses[position] = static_cast<T>(terms.loss);
    total += terms.loss;
    if (grads) {
      const Acc upstream = data.grad_losses ? static_cast<Acc>(data.grad_losses[position]) : scale;
      if (data.grad_input) data.grad_input[position] = static_cast<T>(upstream * terms.grad_input);
      if (data.grad_target) data.grad_target[position] = static_cast<T>(upstream * terms.grad_target);
    }
  }
  if (block_sums == nullptr) return;
  __shared__ double warp_sums[kThreads / kWarp];
  double sum = static_cast<double>(total);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double block_sum = 0.0;
    for (int warp = 0; warp < kThreads / kWarp; ++warp) block_sum += warp_sums[warp];
    block_sums[blockIdx.x] = block_sum;
  }
}

template <typename Acc>
SigmoidOperand<Acc> operand_of(const SigmoidOperandTensor& operand) {
  return {operand.values.defined() ? operand.values.const_data_ptr<Acc>() : nullptr, operand.kind};
}

int64_t blocks_for(int64_t elements) {
  const int64_t resident = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const int64_t needed = (elements + kThreads - 1) / kThreads;
  return std::max<int64_t>(1, std::min(needed, resident));
}

// One pass over the elements with the outputs that are defined; returns the loss sum (a float64 scalar
// tensor on the device) when sum_losses.
at::Tensor run(const SigmoidInputs& inputs, at::Tensor& losses, at::Tensor& grad_input, at::Tensor& grad_target,
               const at::Tensor& grad_losses, const at::Tensor& grad_scale, double scale_factor, bool sum_losses) {
  const int64_t elements = inputs.input.numel();
  const int64_t blocks = blocks_for(elements);
  at::Tensor block_sums = sum_losses ? at::zeros({blocks}, inputs.input.options().dtype(at::kDouble)) : at::Tensor();
  if (elements == 0) return sum_losses ? block_sums.sum() : at::Tensor();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs.input.scalar_type(), "rarekit_sigmoid_loss", [&] {
    using Acc = at::opmath_type<scalar_t>;
    SigmoidArgsT<Acc> args{};
    args.params = {static_cast<Acc>(inputs.params.gamma_pos), static_cast<Acc>(inputs.params.gamma_neg),
                   static_cast<Acc>(inputs.params.clip), inputs.params.pt_form};
    args.rows = inputs.rows;
    args.cols = inputs.cols;
    args.input = inputs.input.const_data_ptr();
    args.target = inputs.target.const_data_ptr();
    args.weight = operand_of<Acc>(inputs.weight);
    args.pos_weight = operand_of<Acc>(inputs.pos_weight);
    args.alpha = operand_of<Acc>(inputs.alpha);
    args.losses = losses.defined() ? losses.mutable_data_ptr() : nullptr;
    args.grad_input = grad_input.defined() ? grad_input.mutable_data_ptr() : nullptr;
    args.grad_target = grad_target.defined() ? grad_target.mutable_data_ptr() : nullptr;
    args.grad_losses = grad_losses.defined() ? grad_losses.const_data_ptr() : nullptr;
    args.grad_scale = static_cast<Acc>(scale_factor);
    sigmoid_loss_kernel<scalar_t, Acc><<<blocks, kThreads, 0, stream>>>(
        args, grad_scale.defined() ? grad_scale.const_data_ptr<Acc>() : nullptr,
        sum_losses ? block_sums.mutable_data_ptr<double>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sum_losses ? block_sums.sum() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> sigmoid_loss_forward_cuda(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& alpha_tensor,
    std::optional<double> alpha, double gamma_pos, double gamma_neg, double clip, bool pt_form, int64_t reduction,
    bool compute_grad) {
  const c10::cuda::CUDAGuard guard(input.device());
  const SigmoidInputs inputs = prepare_sigmoid(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos,
                                               gamma_neg, clip, pt_form, reduction);
  const bool reduced = reduction != kReductionNone;
  const double elements = static_cast<double>(input.numel());
  const double per_element = reduction == kReductionMean ? 1.0 / elements : 1.0;
  at::Tensor losses = reduced ? at::Tensor() : at::empty_like(inputs.input);
  at::Tensor grad_input = reduced && compute_grad ? at::empty_like(inputs.input) : at::Tensor();
  at::Tensor no_target_grad;
  const at::Tensor total = run(inputs, losses, grad_input, no_target_grad, at::Tensor(), at::Tensor(), per_element,
                               reduced);
  if (reduced) {
    losses = (reduction == kReductionMean ? total / elements : total).to(sigmoid_accumulator(input));
  }
  return {losses, grad_input.defined() ? grad_input : sigmoid_no_output(input)};
}

std::tuple<at::Tensor, at::Tensor> sigmoid_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
    const std::optional<at::Tensor>& alpha_tensor, std::optional<double> alpha, double gamma_pos, double gamma_neg,
    double clip, bool pt_form, int64_t reduction, std::array<bool, 2> grad_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  const SigmoidInputs inputs = prepare_sigmoid(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos,
                                               gamma_neg, clip, pt_form, reduction);
  const at::Tensor upstream = sigmoid_grad_loss(grad_loss, inputs);
  const bool reduced = reduction != kReductionNone;
  const double per_element = reduction == kReductionMean ? 1.0 / static_cast<double>(input.numel()) : 1.0;
  at::Tensor no_losses;
  at::Tensor grad_input = grad_mask[0] ? at::empty_like(inputs.input) : at::Tensor();
  at::Tensor grad_target = grad_mask[1] ? at::empty_like(inputs.input) : at::Tensor();
  run(inputs, no_losses, grad_input, grad_target, reduced ? at::Tensor() : upstream,
      reduced ? upstream : at::Tensor(), per_element, false);
  return {grad_input.defined() ? grad_input : sigmoid_no_output(input),
          grad_target.defined() ? grad_target : sigmoid_no_output(input)};
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) {
  m.impl("sigmoid_loss_forward", &sigmoid_loss_forward_cuda);
  m.impl("sigmoid_loss_backward", &sigmoid_loss_backward_cuda);
}

}  // namespace rarekit::cuda
