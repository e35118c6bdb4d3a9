// The per-ISA histogram kernel as the CPU operator files use it (csrc/cpu/count.cpp, sampling.cpp):
// the id dtype table and how many private histograms pay for themselves.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "rarekit/cpu_kernels.h"

namespace rarekit::cpu {

// Private histograms of all threads stay under this many bytes.
constexpr int64_t kPrivateHistogramBytes = int64_t{256} << 20;

// The HistogramFn table slot of an id dtype; `what` names the tensor in the TypeError ("rarekit.count: ids").
inline IdType id_type(at::ScalarType type, const char* what) {
  switch (type) {
    case at::kByte: return kUInt8;
    case at::kChar: return kInt8;
    case at::kShort: return kInt16;
    case at::kInt: return kInt32;
    case at::kLong: return kInt64;
    case at::kUInt16: return kUInt16;
    case at::kUInt32: return kUInt32;
    default: TORCH_CHECK_TYPE(false, what, " must have an integer dtype, got ", type);
  }
}

// How many private histograms pay for themselves: each thread should count at least num_bins ids.
inline int64_t histogram_threads(int64_t n, int64_t num_bins) {
  const int64_t by_work = std::max<int64_t>(1, n / std::max<int64_t>(num_bins, 16384));
  const int64_t by_memory = std::max<int64_t>(1, kPrivateHistogramBytes / (4 * std::max<int64_t>(num_bins, 1)));
  return std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, by_memory});
}

}  // namespace rarekit::cpu
