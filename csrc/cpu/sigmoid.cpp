// CPU operators of the sigmoid loss family (csrc/include/rarekit/sigmoid_math.h). float32, bfloat16 and
// float16 inputs run the per-ISA vector kernels (csrc/cpu/isa/sigmoid_kernels.cpp); float64 inputs a
// scalar double loop over the same sigmoid_element, for gradcheck-grade accuracy rather than speed.
// Elements are split into fixed chunks whose loss sums are added in order: the reduced loss does not
// depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>
#include <vector>

#include "rarekit/cpu_buffer_cache.h"
#include "rarekit/cpu_float_type.h"
#include "rarekit/sigmoid_kernels.h"
#include "rarekit/sigmoid_op.h"
#include "rarekit/torch_utils.h"

namespace rarekit::cpu {
namespace {

constexpr int64_t kChunk = 8192;      // elements per task
constexpr int64_t kChunkGrain = 4;    // tasks per thread at least: small inputs stay on one thread

const SigmoidKernels& sigmoid_kernels() {
#if defined(RAREKIT_X86)
  return pick(SigmoidKernels_baseline, SigmoidKernels_avx2, SigmoidKernels_avx512);
#else
  return SigmoidKernels_baseline;
#endif
}

double run_range_double(const SigmoidArgsT<double>& args, int64_t begin, int64_t end) {
  const auto [input, target, losses, grad_input, grad_target, grad_losses] = typed_pointers<double>(args);
  const bool grads = grad_input != nullptr || grad_target != nullptr;
  double total = 0.0;
  for (int64_t position = begin; position < end; ++position) {
    const int64_t row = position / args.cols, col = position - row * args.cols;
    double a_pos, a_neg;
    alpha_factors<double, double>(args.alpha.kind != kOperandNone, operand_value(args.alpha, row, col, position),
                                  &a_pos, &a_neg);
    const SigmoidTerms<double> terms = sigmoid_element<ScalarMath, double>(
        args.params, input[position], target[position], operand_value(args.weight, row, col, position),
        operand_value(args.pos_weight, row, col, position), a_pos, a_neg, grads);
    if (losses) losses[position] = terms.loss;
    total += terms.loss;
    const double scale = grad_losses ? grad_losses[position] : args.grad_scale;
    if (grad_input) grad_input[position] = scale * terms.grad_input;
    if (grad_target) grad_target[position] = scale * terms.grad_target;
  }
  return total;
}

template <typename Acc>
SigmoidOperand<Acc> operand_of(const SigmoidOperandTensor& operand) {
  return {operand.values.defined() ? operand.values.const_data_ptr<Acc>() : nullptr, operand.kind};
}

void* data_or_null(at::Tensor& tensor) { return tensor.defined() ? tensor.mutable_data_ptr() : nullptr; }

// One pass over the elements with the outputs that are defined; returns the sum of the losses.
template <typename Acc>
double run(const SigmoidInputs& inputs, at::Tensor& losses, at::Tensor& grad_input, at::Tensor& grad_target,
           const at::Tensor& grad_losses, double grad_scale,
           double (*kernel)(const SigmoidArgsT<Acc>&, int64_t, int64_t)) {
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
  args.losses = data_or_null(losses);
  args.grad_input = data_or_null(grad_input);
  args.grad_target = data_or_null(grad_target);
  args.grad_losses = grad_losses.defined() ? grad_losses.const_data_ptr() : nullptr;
  args.grad_scale = static_cast<Acc>(grad_scale);
  for (at::Tensor* fresh : {&losses, &grad_input, &grad_target}) {
    if (fresh->defined()) advise_huge_pages(*fresh);
  }
  const int64_t elements = inputs.input.numel();
  const int64_t chunks = (elements + kChunk - 1) / kChunk;
  std::vector<double> sums(chunks, 0.0);
  at::parallel_for(0, chunks, kChunkGrain, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      sums[chunk] = kernel(args, chunk * kChunk, std::min(elements, (chunk + 1) * kChunk));
    }
  });
  double total = 0.0;
  for (double sum : sums) total += sum;
  return total;
}

double run_any(const SigmoidInputs& inputs, at::Tensor& losses, at::Tensor& grad_input, at::Tensor& grad_target,
               const at::Tensor& grad_losses, double grad_scale) {
  if (inputs.input.scalar_type() == at::kDouble) {
    return run<double>(inputs, losses, grad_input, grad_target, grad_losses, grad_scale, run_range_double);
  }
  return run<float>(inputs, losses, grad_input, grad_target, grad_losses, grad_scale,
                     sigmoid_kernels().run[float_type(inputs.input.scalar_type())]);
}

std::tuple<at::Tensor, at::Tensor> sigmoid_loss_forward_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& alpha_tensor,
    std::optional<double> alpha, double gamma_pos, double gamma_neg, double clip, bool pt_form, int64_t reduction,
    bool compute_grad) {
  const SigmoidInputs inputs = prepare_sigmoid(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos,
                                               gamma_neg, clip, pt_form, reduction);
  const bool reduced = reduction != kReductionNone;
  const double elements = static_cast<double>(input.numel());
  at::Tensor losses = reduced ? at::Tensor() : at::empty_like(inputs.input);
  at::Tensor grad_input = reduced && compute_grad ? empty_reusing_buffers(inputs.input.sizes(), inputs.input.scalar_type())
                                                 : at::Tensor();
  at::Tensor no_target_grad;
  const double total = run_any(inputs, losses, grad_input, no_target_grad, at::Tensor(),
                               reduction == kReductionMean ? 1.0 / elements : 1.0);
  if (reduced) {
    losses = at::scalar_tensor(reduction == kReductionMean ? total / elements : total,
                               input.options().dtype(sigmoid_accumulator(input)));
  }
  return {losses, grad_input.defined() ? grad_input : sigmoid_no_output(input)};
}

std::tuple<at::Tensor, at::Tensor> sigmoid_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
    const std::optional<at::Tensor>& alpha_tensor, std::optional<double> alpha, double gamma_pos, double gamma_neg,
    double clip, bool pt_form, int64_t reduction, std::array<bool, 2> grad_mask) {
  const SigmoidInputs inputs = prepare_sigmoid(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos,
                                               gamma_neg, clip, pt_form, reduction);
  const at::Tensor upstream = sigmoid_grad_loss(grad_loss, inputs);
  const bool reduced = reduction != kReductionNone;
  double scale = 1.0;
  if (reduced) {
    scale = upstream.item<double>() / (reduction == kReductionMean ? static_cast<double>(input.numel()) : 1.0);
  }
  at::Tensor no_losses;
  at::Tensor grad_input = grad_mask[0] ? empty_reusing_buffers(inputs.input.sizes(), inputs.input.scalar_type())
                                      : at::Tensor();
  at::Tensor grad_target = grad_mask[1] ? at::empty_like(inputs.input) : at::Tensor();
  run_any(inputs, no_losses, grad_input, grad_target, reduced ? at::Tensor() : upstream, scale);
  return {grad_input.defined() ? grad_input : sigmoid_no_output(input),
          grad_target.defined() ? grad_target : sigmoid_no_output(input)};
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) {
  m.impl("sigmoid_loss_forward", &sigmoid_loss_forward_cpu);
  m.impl("sigmoid_loss_backward", &sigmoid_loss_backward_cpu);
}

}  // namespace rarekit::cpu
