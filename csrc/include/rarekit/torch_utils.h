// Helpers for the torch-facing operator files (csrc/cpu/*.cpp, csrc/cuda/*.cu).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <optional>

// The id dtypes of rarekit::count: every signed integer type plus uint8, uint16 and uint32.
#define RAREKIT_DISPATCH_ID_TYPES(TYPE, NAME, ...)                 \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE_INTEGRAL_TYPES(__VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kUInt16, __VA_ARGS__) AT_DISPATCH_CASE(at::kUInt32, __VA_ARGS__))

namespace rarekit {

// dtype of weighted counts: float64 for float64 weights, float32 otherwise.
inline at::ScalarType result_dtype(const at::Tensor& weights) {
  return weights.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Raises ValueError naming the first id outside [0, num_bins) that is not ignore_index.
// Called only after a kernel has reported that such an id exists.
[[noreturn]] void raise_first_out_of_range(const at::Tensor& ids, int64_t num_bins,
                                           std::optional<int64_t> ignore_index);

}  // namespace rarekit
