// CPU operators of the cross-entropy family; the row math is in csrc/cpu/isa/cross_entropy_kernels.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>

#include "rarekit/cpu_kernels.h"
#include "rarekit/cross_entropy_op.h"
#include "rarekit/torch_utils.h"

namespace rarekit::cpu {
namespace {

FloatType float_type(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16: return kBFloat16;
    case at::kHalf: return kFloat16;
    default: return kFloat32;
  }
}

// rows per task: at least ~64K logits, so small inputs do not pay for threads
int64_t row_grain(int64_t classes) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(classes, 1)); }

CrossEntropyArgs make_args(const CrossEntropyInputs& inputs) {
  CrossEntropyArgs args{};
  args.config = inputs.config;
  if (inputs.weight_total.defined()) args.config.weight_total = inputs.weight_total.item<float>();
  args.logits = inputs.logits.const_data_ptr();
  args.target = inputs.target.const_data_ptr<int64_t>();
  args.weight = inputs.weight.defined() ? inputs.weight.const_data_ptr<float>() : nullptr;
  args.adjust = inputs.adjust.defined() ? inputs.adjust.const_data_ptr<float>() : nullptr;
  return args;
}

std::tuple<at::Tensor, at::Tensor> forward(const CrossEntropyInputs& inputs, const at::Tensor& grad_out,
                                           const std::optional<at::Tensor>& grad_scale) {
  const int64_t rows = inputs.logits.size(0);
  at::Tensor losses = at::empty({rows}, inputs.logits.options().dtype(at::kFloat));
  at::Tensor row_terms = at::empty({rows, kRowTermCount}, inputs.logits.options().dtype(at::kFloat));
  CrossEntropyArgs args = make_args(inputs);
  args.losses = losses.mutable_data_ptr<float>();
  args.row_terms = row_terms.mutable_data_ptr<float>();
  at::Tensor scale;
  if (grad_out.defined()) {
    scale = grad_scale->to(at::kFloat).contiguous();
    args.grad = grad_out.data_ptr();
    args.grad_scale = scale.const_data_ptr<float>();
  }
  const CrossEntropyForwardFn kernel = cross_entropy_kernels().forward[float_type(inputs.logits.scalar_type())];
  std::atomic<int64_t> first_bad_row{rows};
  at::parallel_for(0, rows, row_grain(inputs.config.num_classes), [&](int64_t begin, int64_t end) {
    const int64_t bad = kernel(args, begin, end);
    if (bad >= 0) {
      int64_t seen = first_bad_row.load();
      while (bad < seen && !first_bad_row.compare_exchange_weak(seen, bad)) {
      }
    }
  });
  if (first_bad_row.load() < rows) check_targets(inputs.target, inputs.config.num_classes, inputs.config.ignore_index);
  return {losses, row_terms};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, int64_t ignore_index, double label_smoothing,
    bool target_weighted, double focal_gamma, double z_loss, bool /*check: always on CPU*/) {
  return forward(prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index, label_smoothing,
                                       target_weighted, focal_gamma, z_loss),
                 at::Tensor(), std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_inplace_cpu(
    at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const at::Tensor& grad_scale, int64_t ignore_index,
    double label_smoothing, bool target_weighted, double focal_gamma, double z_loss, bool /*check*/) {
  TORCH_CHECK_VALUE(logits.is_contiguous(), "rarekit.cross_entropy: inplace_backward needs contiguous logits");
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  check_targets(inputs.target, inputs.config.num_classes, ignore_index);  // before the logits are overwritten
  return forward(inputs, logits, grad_scale);
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& logits,
                                      const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& logit_adjustment, const at::Tensor& row_terms,
                                      int64_t ignore_index, double label_smoothing, bool target_weighted,
                                      double focal_gamma, double z_loss) {
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  at::Tensor grad = at::empty_like(inputs.logits);
  advise_huge_pages(grad);
  const at::Tensor upstream = grad_losses.to(at::kFloat).contiguous();
  const at::Tensor terms = row_terms.contiguous();
  CrossEntropyArgs args = make_args(inputs);
  args.row_terms = const_cast<float*>(terms.const_data_ptr<float>());
  args.grad = grad.mutable_data_ptr();
  args.grad_losses = upstream.const_data_ptr<float>();
  const CrossEntropyBackwardFn kernel = cross_entropy_kernels().backward[float_type(inputs.logits.scalar_type())];
  at::parallel_for(0, inputs.logits.size(0), row_grain(inputs.config.num_classes),
                   [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cpu);
  m.impl("cross_entropy_forward_inplace", &cross_entropy_forward_inplace_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
}

}  // namespace rarekit::cpu
