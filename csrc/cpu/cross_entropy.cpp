// CPU operators of the cross-entropy family. The float32/bf16/fp16 row math is in
// csrc/cpu/isa/cross_entropy_kernels.cpp (vectorized, per ISA); float64 logits take the scalar
// double kernels below, for gradcheck-grade accuracy rather than speed. Both call the same
// per-row helper, cross_entropy_row (csrc/include/rarekit/cross_entropy_math.h).
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "rarekit/cpu_float_type.h"
#include "rarekit/cpu_buffer_cache.h"
#include "rarekit/cpu_kernels.h"
#include "rarekit/cpu_parallel.h"
#include "rarekit/cross_entropy_op.h"
#include "rarekit/torch_utils.h"

namespace rarekit::cpu {
namespace {

// rows per task: at least ~64K logits, so small inputs do not pay for threads
int64_t row_grain(int64_t classes) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(classes, 1)); }

int64_t row_bytes(const at::Tensor& logits) { return logits.size(1) * logits.element_size(); }

template <typename Acc>
CrossEntropyArgsT<Acc> make_args(const CrossEntropyInputs& inputs) {
  CrossEntropyArgsT<Acc> args{};
  args.config = inputs.config;
  if (inputs.weight.defined()) {  // Σ w in double, on the host: no torch op for a small batch to pay for
    const Acc* weight = inputs.weight.const_data_ptr<Acc>();
    double total = 0.0;
    for (int64_t k = 0; k < inputs.config.num_classes; ++k) total += static_cast<double>(weight[k]);
    args.config.weight_total = total;
  }
  args.logits = inputs.logits.const_data_ptr();
  args.target = inputs.target.const_data_ptr<int64_t>();
  args.weight = inputs.weight.defined() ? inputs.weight.const_data_ptr<Acc>() : nullptr;
  args.adjust = inputs.adjust.defined() ? inputs.adjust.const_data_ptr<Acc>() : nullptr;
  args.margin = inputs.margin.defined() ? inputs.margin.const_data_ptr<Acc>() : nullptr;
  return args;
}

// Raises IndexError naming the first target outside [0, classes) that is not ignore_index. A scan
// of the targets first, so a batch with none such pays for no torch op.
void check_targets_cpu(const CrossEntropyInputs& inputs) {
  const CrossEntropyConfig& config = inputs.config;
  const int64_t* target = inputs.target.const_data_ptr<int64_t>();
  for (int64_t i = 0, rows = inputs.target.numel(); i < rows; ++i) {
    if (target[i] != config.ignore_index && (target[i] < 0 || target[i] >= config.num_classes)) {
      check_targets(inputs.target, config.num_classes, config.ignore_index);
    }
  }
}

// ---- float64: one scalar pass for the max, one for Σ exp and the smoothing sum, one for the gradient.
double adjusted(const CrossEntropyArgsT<double>& args, const double* row, int64_t k) {
  return row[k] + (args.adjust ? args.adjust[k] : 0.0);
}

// z'_y = z_y + a_y - m_y (target_margin m)
double target_adjusted(const CrossEntropyArgsT<double>& args, const double* row, int64_t target) {
  return adjusted(args, row, target) - (args.margin ? args.margin[target] : 0.0);
}

void gradient_row_double(const CrossEntropyArgsT<double>& args, const double* row, int64_t target,
                         const CrossEntropyRowTerms<double>& terms, double scale, double* out) {
  const int64_t classes = args.config.num_classes;
  const double* smooth_weight = per_class_smoothing(args.config) ? args.weight : nullptr;
  const double target_grad = scale * (terms.coef_p * std::exp(target_adjusted(args, row, target) - terms.max_logit) -
                                      terms.coef_v * (smooth_weight ? smooth_weight[target] : 1.0) - terms.coef_y);
  for (int64_t k = 0; k < classes; ++k) {
    out[k] = scale * (terms.coef_p * std::exp(adjusted(args, row, k) - terms.max_logit) -
                      terms.coef_v * (smooth_weight ? smooth_weight[k] : 1.0));
  }
  out[target] = target_grad;  // computed before the row was overwritten (out may alias row)
}

int64_t forward_rows_double(const CrossEntropyArgsT<double>& args, int64_t begin, int64_t end) {
  const CrossEntropyConfig& config = args.config;
  const int64_t classes = config.num_classes;
  const double* smooth_weight = per_class_smoothing(config) ? args.weight : nullptr;
  int64_t first_bad_row = -1;
  for (int64_t i = begin; i < end; ++i) {
    const double* row = static_cast<const double*>(args.logits) + i * classes;
    double* out = args.grad ? static_cast<double*>(args.grad) + i * classes : nullptr;
    const int64_t target = args.target[i];
    const bool ignored = target == config.ignore_index, in_range = target >= 0 && target < classes;
    CrossEntropyRowTerms<double> terms{0.0, 0.0, 0.0, 0.0};
    double loss = 0.0;
    if (!ignored && in_range) {
      const double target_logit = target_adjusted(args, row, target);
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t k = 0; k < classes; ++k) {  // NaN ignored here
        max = std::max(max, k == target ? target_logit : adjusted(args, row, k));
      }
      const double shift = std::isfinite(max) ? max : 0.0;
      double sum_exp = 0.0, smooth_sum = 0.0;
      for (int64_t k = 0; k < classes; ++k) {
        const double z = k == target ? target_logit : adjusted(args, row, k);
        sum_exp += std::exp(z - shift);
        if (config.label_smoothing > 0.0) smooth_sum += (smooth_weight ? smooth_weight[k] : 1.0) * (z - shift);
      }
      loss = cross_entropy_row<double>(config, shift, std::log(sum_exp), target_logit, smooth_sum,
                                       shift, args.weight ? args.weight[target] : 1.0, &terms);
      if (out) gradient_row_double(args, row, target, terms, args.grad_scale[0], out);
    } else {
      if (!ignored) {  // reported by the caller; NaN keeps the row from passing silently
        loss = std::numeric_limits<double>::quiet_NaN();
        if (first_bad_row < 0) first_bad_row = i;
      }
      if (out) std::fill(out, out + classes, 0.0);
    }
    args.losses[i] = loss;
    double* saved = args.row_terms + i * kRowTermCount;
    saved[0] = terms.max_logit, saved[1] = terms.coef_p, saved[2] = terms.coef_y, saved[3] = terms.coef_v;
  }
  return first_bad_row;
}

void backward_rows_double(const CrossEntropyArgsT<double>& args, int64_t begin, int64_t end) {
  const CrossEntropyConfig& config = args.config;
  for (int64_t i = begin; i < end; ++i) {
    double* out = static_cast<double*>(args.grad) + i * config.num_classes;
    const int64_t target = args.target[i];
    if (target == config.ignore_index || target < 0 || target >= config.num_classes) {
      std::fill(out, out + config.num_classes, 0.0);
      continue;
    }
    const double* saved = args.row_terms + i * kRowTermCount;
    gradient_row_double(args, static_cast<const double*>(args.logits) + i * config.num_classes, target,
                        {saved[0], saved[1], saved[2], saved[3]}, args.grad_losses[i], out);
  }
}

// ---- operators
template <typename Acc, typename Kernel>
std::tuple<at::Tensor, at::Tensor> run_forward(const CrossEntropyInputs& inputs, const at::Tensor& grad_out,
                                               const at::Tensor& scale, Kernel kernel) {
  const int64_t rows = inputs.logits.size(0);
  const auto options = inputs.logits.options().dtype(accumulator_type(inputs.logits));
  at::Tensor losses = at::empty({rows}, options);
  at::Tensor row_terms = at::empty({rows, kRowTermCount}, options);
  advise_huge_pages(losses);  // fresh outputs: 4 and 16 bytes per row, as much as the logits for few classes
  advise_huge_pages(row_terms);
  CrossEntropyArgsT<Acc> args = make_args<Acc>(inputs);
  args.losses = losses.mutable_data_ptr<Acc>();
  args.row_terms = row_terms.mutable_data_ptr<Acc>();
  if (grad_out.defined()) {
    args.grad = grad_out.data_ptr();
    args.grad_scale = scale.const_data_ptr<Acc>();
  }
  std::atomic<int64_t> first_bad_row{rows};
  parallel_range(0, rows, row_grain(inputs.config.num_classes), row_bytes(inputs.logits), [&](int64_t begin, int64_t end) {
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

std::tuple<at::Tensor, at::Tensor> forward(const CrossEntropyInputs& inputs, const at::Tensor& grad_out,
                                           const at::Tensor& scale) {
  if (inputs.logits.scalar_type() == at::kDouble) {
    return run_forward<double>(inputs, grad_out, scale, forward_rows_double);
  }
  return run_forward<float>(inputs, grad_out, scale,
                            cross_entropy_kernels().forward[float_type(inputs.logits.scalar_type())]);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    int64_t ignore_index, double label_smoothing, bool target_weighted, double focal_gamma, double z_loss,
    bool /*check: always on CPU*/) {
  return forward(prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index,
                                       label_smoothing, target_weighted, focal_gamma, z_loss),
                 at::Tensor(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_inplace_cpu(
    at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    const at::Tensor& grad_scale, int64_t ignore_index, double label_smoothing, bool target_weighted,
    double focal_gamma, double z_loss, bool /*check*/) {
  const CrossEntropyInputs inputs =
      prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index, label_smoothing,
                            target_weighted, focal_gamma, z_loss);
  TORCH_CHECK_VALUE(logits.is_contiguous(), "rarekit.cross_entropy: inplace_backward needs contiguous logits");
  const at::Tensor scale = row_vector(grad_scale, "grad_scale", {1}, logits);
  check_targets_cpu(inputs);  // before the logits are overwritten
  return forward(inputs, logits, scale);
}

at::Tensor cross_entropy_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& logits,
                                      const at::Tensor& target, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& logit_adjustment,
                                      const std::optional<at::Tensor>& target_margin, const at::Tensor& row_terms,
                                      int64_t ignore_index, double label_smoothing, bool target_weighted,
                                      double focal_gamma, double z_loss) {
  const CrossEntropyInputs inputs =
      prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index, label_smoothing,
                            target_weighted, focal_gamma, z_loss);
  const int64_t rows = inputs.logits.size(0);
  const at::Tensor upstream = row_vector(grad_losses, "grad_losses", {rows}, logits);
  const at::Tensor terms = row_vector(row_terms, "row_terms", {rows, kRowTermCount}, logits, true);
  check_targets_cpu(inputs);  // O(rows), as the forward
  at::Tensor grad = empty_reusing_buffers(inputs.logits.sizes(), inputs.logits.scalar_type());
  const auto run = [&](auto zero, auto kernel) {
    using Acc = decltype(zero);
    CrossEntropyArgsT<Acc> args = make_args<Acc>(inputs);
    args.row_terms = const_cast<Acc*>(terms.const_data_ptr<Acc>());
    args.grad = grad.mutable_data_ptr();
    args.grad_losses = upstream.const_data_ptr<Acc>();
    parallel_range(0, rows, row_grain(inputs.config.num_classes), row_bytes(inputs.logits),
                   [&](int64_t begin, int64_t end) { kernel(args, begin, end); });
  };
  if (inputs.logits.scalar_type() == at::kDouble) {
    run(0.0, backward_rows_double);
  } else {
    run(0.0f, cross_entropy_kernels().backward[float_type(inputs.logits.scalar_type())]);
  }
  return grad;
}

// ---- cross_entropy_reduced: the reduced loss, and its gradient written in the same pass as the loss.
// The rows go in blocks of whole 16-row vectors (the few-class kernels) of about 64K logits (long rows
// still spread over threads); each block's per-row losses and row terms stay in an L1-sized buffer on the
// stack and are added up at once, so the only (rows, classes) traffic is one read of the logits and one
// write of the gradient. The block grid does not depend on the thread count and the blocks' partial sums
// are added in block order: the same loss on any number of threads.
constexpr int64_t kReducedBlockRows = 1024;

int64_t reduced_block_rows(int64_t classes) {
  return std::clamp<int64_t>(65536 / std::max<int64_t>(classes, 1) / 16 * 16, 1, kReducedBlockRows);
}

// Σ_r values[r] (times sample_weight[r] when given) in double, in eight independent chains.
template <typename Acc>
double block_total(const Acc* values, const Acc* sample_weight, int64_t count) {
  double chains[8] = {};
  int64_t r = 0;
  for (; r + 8 <= count; r += 8) {
    for (int j = 0; j < 8; ++j) {
      chains[j] += static_cast<double>(values[r + j]) * (sample_weight ? static_cast<double>(sample_weight[r + j]) : 1.0);
    }
  }
  for (; r < count; ++r) chains[0] += static_cast<double>(values[r]) * (sample_weight ? static_cast<double>(sample_weight[r]) : 1.0);
  return ((chains[0] + chains[1]) + (chains[2] + chains[3])) + ((chains[4] + chains[5]) + (chains[6] + chains[7]));
}

// Gradient rows times their sample weights (rows of `classes` values of type T).
template <typename T, typename Acc>
void scale_gradient_rows(void* grad, const Acc* sample_weight, int64_t rows, int64_t classes) {
  T* out = static_cast<T*>(grad);
  for (int64_t r = 0; r < rows; ++r) {
    const Acc scale = sample_weight[r];
    for (int64_t k = 0; k < classes; ++k) out[r * classes + k] = static_cast<T>(static_cast<Acc>(out[r * classes + k]) * scale);
  }
}

template <typename Acc>
using ScaleRowsFn = void (*)(void*, const Acc*, int64_t, int64_t);

template <typename Acc>
ScaleRowsFn<Acc> scale_rows_for(at::ScalarType type) {
  if constexpr (std::is_same_v<Acc, double>) {
    return scale_gradient_rows<double, double>;
  } else {
    switch (type) {
      case at::kBFloat16: return scale_gradient_rows<at::BFloat16, float>;
      case at::kHalf: return scale_gradient_rows<at::Half, float>;
      default: return scale_gradient_rows<float, float>;
    }
  }
}

// torch's "mean" divisor: Σ w_y (the count without weights) over the rows whose target is not
// ignore_index, in double. Raises IndexError naming the first target out of [0, classes).
template <typename Acc>
double target_weight_total(const CrossEntropyInputs& inputs, int64_t block_rows) {
  const CrossEntropyConfig& config = inputs.config;
  const int64_t rows = inputs.target.numel(), blocks = (rows + block_rows - 1) / block_rows;
  const int64_t* target = inputs.target.const_data_ptr<int64_t>();
  const Acc* weight = inputs.weight.defined() ? inputs.weight.const_data_ptr<Acc>() : nullptr;
  std::vector<double> partial(blocks);
  std::atomic<bool> out_of_range{false};
  parallel_range(0, blocks, 1, block_rows * static_cast<int64_t>(sizeof(int64_t)), [&](int64_t lo, int64_t hi) {
    bool bad = false;
    // w_y of a counted row, 0 for an ignored or out-of-range one (which sets `bad`)
    const auto row_weight = [&](int64_t i) {
      const int64_t y = target[i];
      const bool in_range = static_cast<uint64_t>(y) < static_cast<uint64_t>(config.num_classes);
      bad |= !in_range && y != config.ignore_index;
      if (!in_range || y == config.ignore_index) return 0.0;
      return weight ? static_cast<double>(weight[y]) : 1.0;
    };
    for (int64_t b = lo; b < hi; ++b) {
      // four independent sums: one chain of dependent adds was a third of a 2^20 x 2 loss
      double chains[4] = {};
      int64_t i = b * block_rows;
      const int64_t end = std::min(rows, i + block_rows);
      for (; i + 4 <= end; i += 4) {
        chains[0] += row_weight(i);
        chains[1] += row_weight(i + 1);
        chains[2] += row_weight(i + 2);
        chains[3] += row_weight(i + 3);
      }
      for (; i < end; ++i) chains[0] += row_weight(i);
      partial[b] = (chains[0] + chains[1]) + (chains[2] + chains[3]);
    }
    if (bad) out_of_range.store(true);
  });
  if (out_of_range.load()) check_targets(inputs.target, config.num_classes, config.ignore_index);
  double total = 0.0;
  for (const double part : partial) total += part;
  return total;
}

template <typename Acc, typename Kernel>
std::tuple<at::Tensor, at::Tensor> run_reduced(const CrossEntropyInputs& inputs, const at::Tensor& sample, bool mean,
                                               bool compute_grad, Kernel kernel) {
  const int64_t rows = inputs.logits.size(0), classes = inputs.config.num_classes;
  const int64_t block_rows = reduced_block_rows(classes), blocks = (rows + block_rows - 1) / block_rows;
  const int64_t bytes = row_bytes(inputs.logits);
  const double divisor = mean ? target_weight_total<Acc>(inputs, block_rows) : 1.0;
  const Acc scale = static_cast<Acc>(1.0 / divisor);  // inf when Σ w_y = 0: NaN gradients, as autograd gives
  at::Tensor grad = compute_grad ? empty_reusing_buffers(inputs.logits.sizes(), inputs.logits.scalar_type())
                                 : at::empty({0}, inputs.logits.options());
  CrossEntropyArgsT<Acc> args = make_args<Acc>(inputs);
  args.grad_scale = &scale;
  char* grad_rows = compute_grad ? static_cast<char*>(grad.mutable_data_ptr()) : nullptr;
  const Acc* sample_weight = sample.defined() ? sample.const_data_ptr<Acc>() : nullptr;
  const ScaleRowsFn<Acc> scale_rows = scale_rows_for<Acc>(inputs.logits.scalar_type());
  std::vector<double> partial(blocks);
  std::atomic<int64_t> first_bad_row{rows};
  parallel_range(0, blocks, 1, block_rows * bytes, [&](int64_t lo, int64_t hi) {
    Acc losses[kReducedBlockRows];
    Acc row_terms[kReducedBlockRows * kRowTermCount];
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t first = b * block_rows, count = std::min(block_rows, rows - first);
      CrossEntropyArgsT<Acc> block = args;
      block.logits = static_cast<const char*>(args.logits) + first * bytes;
      block.target = args.target + first;
      block.losses = losses, block.row_terms = row_terms;
      block.grad = grad_rows ? grad_rows + first * bytes : nullptr;
      const int64_t bad = kernel(block, 0, count);
      if (bad >= 0) {
        int64_t seen = first_bad_row.load();
        while (first + bad < seen && !first_bad_row.compare_exchange_weak(seen, first + bad)) {
        }
      }
      const Acc* block_sample = sample_weight ? sample_weight + first : nullptr;
      partial[b] = block_total(losses, block_sample, count);
      if (block_sample && block.grad) scale_rows(block.grad, block_sample, count, classes);
    }
  });
  if (first_bad_row.load() < rows) check_targets(inputs.target, classes, inputs.config.ignore_index);
  double total = 0.0;
  for (const double part : partial) total += part;
  const double loss = !mean ? total : divisor == 0.0 ? std::numeric_limits<double>::quiet_NaN() : total / divisor;
  if (inputs.logits.scalar_type() != c10::CppTypeToScalarType<Acc>::value) {  // bf16, fp16: rounded
    return {at::scalar_tensor(loss, inputs.logits.options()), grad};
  }
  at::Tensor result = at::empty({}, inputs.logits.options());  // written here: one dispatcher call, not two
  *result.mutable_data_ptr<Acc>() = static_cast<Acc>(loss);
  return {result, grad};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cross_entropy_reduced_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& logit_adjustment, const std::optional<at::Tensor>& target_margin,
    const std::optional<at::Tensor>& sample_weight,
    int64_t ignore_index, double label_smoothing, bool target_weighted, double focal_gamma, double z_loss,
    int64_t reduction, bool compute_grad, bool /*check: always on CPU*/) {
  const CrossEntropyInputs inputs = prepare_cross_entropy(logits, target, weight, logit_adjustment, target_margin, ignore_index,
                                                          label_smoothing, target_weighted, focal_gamma, z_loss);
  const at::Tensor sample = reduced_sample_weight(sample_weight, reduction, logits);
  if (logits.scalar_type() == at::kDouble) {
    return run_reduced<double>(inputs, sample, reduction == kReduceMean, compute_grad, forward_rows_double);
  }
  return run_reduced<float>(inputs, sample, reduction == kReduceMean, compute_grad,
                            cross_entropy_kernels().forward[float_type(logits.scalar_type())]);
}

TORCH_LIBRARY_IMPL(rarekit, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_cpu);
  m.impl("cross_entropy_forward_inplace", &cross_entropy_forward_inplace_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
  m.impl("cross_entropy_reduced", &cross_entropy_reduced_cpu);
}

}  // namespace rarekit::cpu
