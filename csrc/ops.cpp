// Every rarekit operator schema, in one place. Backends register implementations in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake (meta) kernels and autograd live in rarekit/ops/.
#include <torch/extension.h>

#include "rarekit/cpu_buffer_cache.h"
#include "rarekit/cpu_kernels.h"
#include "rarekit/cross_entropy_op.h"
#include "rarekit/torch_utils.h"

TORCH_LIBRARY(rarekit, m) {
  // Histogram of integer ids over [0, num_bins): int64 counts, or float sums of `weights`.
  m.def("count(Tensor ids, int num_bins, int? ignore_index, Tensor? weights, bool check) -> Tensor");
  // Cross-entropy family (csrc/include/rarekit/cross_entropy_math.h): per-row losses of (rows, classes)
  // logits and the per-row terms the backward needs (lse and three gradient coefficients). target_margin m
  // (LDAM): the target's logit is z_y + a_y - m_y.
  m.def(
      "cross_entropy_forward(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_adjustment, "
      "Tensor? target_margin, int ignore_index, float label_smoothing, bool target_weighted, float focal_gamma, "
      "float z_loss, bool check) -> (Tensor losses, Tensor row_terms)");
  // The same, also overwriting logits with grad_scale * d(losses.sum())/d(logits) (inplace_backward).
  m.def(
      "cross_entropy_forward_inplace(Tensor(a!) logits, Tensor target, Tensor? weight, Tensor? logit_adjustment, "
      "Tensor? target_margin, Tensor grad_scale, int ignore_index, float label_smoothing, bool target_weighted, "
      "float focal_gamma, float z_loss, bool check) -> (Tensor losses, Tensor row_terms)");
  // The reduced loss (reduction: 1 mean, 2 sum) of the same rows, each row's loss times its sample_weight
  // ((rows,), or none), in the logits dtype; "mean" divides by Σ w_y over the non-ignored rows (NaN when it is
  // 0), as torch. With compute_grad, also d(loss)/d(logits) (contiguous, the logits dtype), written in the same
  // pass as the loss (an empty tensor otherwise): the backward is grad_output times it.
  m.def(
      "cross_entropy_reduced(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_adjustment, "
      "Tensor? target_margin, Tensor? sample_weight, int ignore_index, float label_smoothing, bool target_weighted, float focal_gamma, "
      "float z_loss, int reduction, bool compute_grad, bool check) -> (Tensor loss, Tensor grad_logits)");
  m.def(
      "cross_entropy_backward(Tensor grad_losses, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor? logit_adjustment, Tensor? target_margin, Tensor row_terms, int ignore_index, float label_smoothing, "
      "bool target_weighted, float focal_gamma, float z_loss) -> Tensor");
  // Fused linear + cross-entropy (csrc/include/rarekit/linear_cross_entropy_op.h): per-row losses of
  // softcap(hidden @ classifier^T + bias), one chunk of rows of logits at a time; with grad_scale c ((1,) or
  // (rows,)), also the gradients of sum_i c_i losses_i for hidden, classifier, bias and logit_adjustment, each
  // where grad_mask asks for it (empty tensors otherwise: a frozen classifier costs no (classes, dim) product).
  m.def(
      "linear_cross_entropy_forward(Tensor hidden, Tensor classifier, Tensor? bias, Tensor target, Tensor? weight, "
      "Tensor? logit_adjustment, Tensor? target_margin, Tensor? grad_scale, int ignore_index, float label_smoothing, "
      "bool target_weighted, float focal_gamma, float z_loss, float? softcap, int chunk_rows, bool[4] grad_mask, "
      "bool check) -> "
      "(Tensor losses, Tensor grad_hidden, Tensor grad_classifier, Tensor grad_bias, Tensor grad_logit_adjustment)");
  // Sigmoid family (csrc/include/rarekit/sigmoid_math.h): binary cross-entropy with logits, focal and
  // asymmetric terms, elementwise over an input of any shape. weight, pos_weight and alpha_tensor broadcast to
  // the input (alpha: a number, or a tensor, or neither); reduction: 0 none, 1 mean, 2 sum. The forward
  // returns the loss (per element in the input dtype, or a scalar in the accumulator dtype) and, for a
  // reduced loss with compute_grad, its gradient for the input (empty otherwise).
  m.def(
      "sigmoid_loss_forward(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, Tensor? alpha_tensor, "
      "float? alpha, float gamma_pos, float gamma_neg, float clip, bool pt_form, int reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor grad_input)");
  // grad_loss times the loss's gradients for the input and the target, each where grad_mask asks for it.
  m.def(
      "sigmoid_loss_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? alpha_tensor, float? alpha, float gamma_pos, float gamma_neg, float clip, bool pt_form, "
      "int reduction, bool[2] grad_mask) -> (Tensor grad_input, Tensor grad_target)");
  // Vocabulary-parallel cross-entropy (csrc/include/rarekit/vocab_parallel_math.h): the (3, rows) block, (4, rows)
  // with label_smoothing, of one shard's per-row partials (max, log-sum-exp against it, the owned target's logit
  // against it, the smoothing sum) for (rows, V_local) logits whose first class is vocab_start; target: global ids.
  m.def(
      "vocab_parallel_statistics(Tensor logits, Tensor target, Tensor? weight, Tensor? logit_adjustment, "
      "int vocab_start, int ignore_index, float label_smoothing, bool target_weighted) -> Tensor");
  // Resampling (csrc/include/rarekit/sampling_math.h). A stable counting sort of integer codes: order
  // lists the positions of code 0, then code 1, ...; codes outside [0, num_classes) come last;
  // bucket c is order[offsets[c]:offsets[c + 1]] (num_classes + 1 offsets).
  m.def("class_buckets(Tensor codes, int num_classes) -> (Tensor order, Tensor offsets)");
  // draw_counts[b] entries of bucket b of order, bucket after bucket (total = draw_counts.sum()):
  // with replacement, uniform draws; without, a uniform random subset, in random order (a bucket
  // drawn in full keeps its order). The result is a function of (inputs, seed) on every device.
  // Inconsistent offsets/draw_counts raise ValueError; on CUDA that check copies them to the host
  // (one synchronization), and check=false skips it (csrc/cuda/sampling.cu says what is written then).
  m.def(
      "draw_from_buckets(Tensor order, Tensor offsets, Tensor draw_counts, int total, int seed, "
      "bool replacement, bool check=True) -> Tensor");
  // The same written into `out` (total = out.numel()), e.g. the tail of a buffer that holds other indices too.
  m.def(
      "draw_from_buckets_into(Tensor order, Tensor offsets, Tensor draw_counts, int seed, bool replacement, "
      "Tensor(a!) out, bool check=True) -> ()");
  // Rows of source at indices, of any dtype, copied as bytes (csrc/cpu/gather.cpp): out[j] = source[indices[j]].
  // Indices outside [0, rows) raise IndexError; on CUDA that check waits for the kernel, check=false skips it.
  m.def("gather_rows(Tensor source, Tensor indices, bool check=True) -> Tensor");
  // source[b] repeated repeats[b] times, row after row, written into out (rows = repeats.sum()), of any dtype,
  // copied as bytes: torch.repeat_interleave(source, repeats, dim=0). Negative repeats or a sum other than
  // out's rows raise ValueError; on CUDA that check copies repeats to the host, check=false skips it.
  m.def("repeat_rows_into(Tensor source, Tensor repeats, Tensor(a!) out, bool check=True) -> ()");
  // Runs of rows of variable length (segments, e.g. the rows of a CSR matrix): for every j,
  // out[out_offsets[j]:out_offsets[j + 1]] = values[starts[j]:starts[j] + out_offsets[j + 1] - out_offsets[j]],
  // of any dtype, copied as bytes. A segment outside values or out, or decreasing out_offsets, raise
  // ValueError; on CUDA that check waits for the kernel, check=false skips it (such segments are not written).
  m.def("gather_segments_into(Tensor values, Tensor starts, Tensor out_offsets, Tensor(a!) out, bool check=True) -> ()");
}

namespace {

std::string build_info() {
  std::string info = "compiler=";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " __VERSION__;
#endif
#if defined(RAREKIT_WITH_CUDA)
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
  return info;
}

void set_cpu_isa(const std::string& name) {
  using rarekit::cpu::Isa;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (name == rarekit::cpu::isa_name(isa)) return rarekit::cpu::set_active_isa(isa);
  }
  throw std::invalid_argument("set_cpu_isa: unknown ISA '" + name + "'; expected baseline, avx2 or avx512");
}

std::vector<std::string> supported_cpu_isas() {
  using rarekit::cpu::Isa;
  std::vector<std::string> names;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512}) {
    if (rarekit::cpu::isa_supported(isa)) names.emplace_back(rarekit::cpu::isa_name(isa));
  }
  return names;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", &build_info, "compiler and CUDA flags of this build");
  module.def("cpu_isa", [] { return std::string(rarekit::cpu::isa_name(rarekit::cpu::active_isa())); },
             "the CPU kernel ISA in use");
  module.def("supported_cpu_isas", &supported_cpu_isas, "the CPU kernel ISAs this CPU can run");
  module.def("set_cpu_isa", &set_cpu_isa, "use the CPU kernels compiled for this ISA");
  // the GIL is released while they run, as torch's own ops do (a data-loader thread keeps working)
  module.def("cross_entropy_reduced_cpu", &rarekit::cpu::cross_entropy_reduced_cpu,
             "rarekit::cross_entropy_reduced's CPU kernel, called without the dispatcher (plain CPU tensors only)",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("cross_entropy_reduced_autograd", &rarekit::cpu::cross_entropy_reduced_autograd,
             "rarekit::cross_entropy_reduced on plain CPU tensors, with its autograd node in C++ (eager only)",
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("release_cached_buffers", &rarekit::cpu::release_cached_buffers,
             "free the CPU gradient buffers kept for reuse; returns the bytes freed");
  module.def("advise_huge_pages", &rarekit::advise_huge_pages,
             "back a fresh, untouched CPU tensor with transparent huge pages (contents unchanged)");
}
