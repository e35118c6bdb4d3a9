// Helpers for the torch-facing operator files (csrc/cpu/*.cpp, csrc/cuda/*.cu).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <optional>
#if defined(__linux__)
#include <sys/mman.h>
#endif

// The id dtypes of rarekit::count: every signed integer type plus uint8, uint16 and uint32.
#define RAREKIT_DISPATCH_ID_TYPES(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE_INTEGRAL_TYPES(__VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kUInt16, __VA_ARGS__) AT_DISPATCH_CASE(at::kUInt32, __VA_ARGS__))

namespace rarekit {

// dtype of weighted counts: float64 for float64 weights, float32 otherwise.
inline at::ScalarType result_dtype(const at::Tensor& weights) {
  return weights.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Asks Linux to back a large, not yet touched CPU tensor with transparent huge pages (honoured
// when /sys/kernel/mm/transparent_hugepage/enabled is "madvise" or "always"). Writing a fresh
// (N, C) gradient otherwise costs one page fault per 4 KiB, which on a 512 MB gradient costs
// several times the writes themselves. Has no effect on contents.
inline void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(fresh.nbytes());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1), last = end & ~(kHugePage - 1);
  if (fresh.is_cpu() && last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// A dual tensor (forward-mode AD) handed to an op directly: a kernel cannot carry its tangent, so the op
// raises instead of returning a result whose tangent is silently zero. The rarekit functions that support
// forward AD (rarekit.cross_entropy, the sigmoid losses) run the ops inside their autograd Functions, where
// forward grad is off and these checks pass.
inline void refuse_forward_ad(const at::Tensor& tensor, const char* name, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(!tensor.defined() || !tensor._fw_grad(/*level=*/0).defined(), op, ": ", name,
                              " is a dual tensor (forward-mode AD): the torch.ops.rarekit kernels do not propagate "
                              "tangents; call rarekit.cross_entropy or the sigmoid losses, which do, or pass a "
                              "plain tensor");
}

inline void refuse_forward_ad(const std::optional<at::Tensor>& tensor, const char* name, const char* op) {
  if (tensor) refuse_forward_ad(*tensor, name, op);
}

// rarekit::count's argument checks, shared by the CPU and CUDA operators (defined in csrc/cpu/count.cpp):
// num_bins >= 0; ids of an id dtype (RAREKIT_DISPATCH_ID_TYPES); weights, when given, float32, float64,
// float16 or bfloat16, of the shape of ids and on its device. Dtypes, shapes and devices only: no host sync.
void check_count_arguments(const at::Tensor& ids, int64_t num_bins, const std::optional<at::Tensor>& weights);

// Raises ValueError naming the first id outside [0, num_bins) that is not ignore_index.
// Called only after a kernel has reported that such an id exists.
[[noreturn]] void raise_first_out_of_range(const at::Tensor& ids, int64_t num_bins,
                                           std::optional<int64_t> ignore_index);

}  // namespace rarekit
