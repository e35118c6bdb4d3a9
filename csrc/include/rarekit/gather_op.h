// Shared by the CPU and CUDA implementations of rarekit::gather_rows, rarekit::repeat_rows_into and
// rarekit::gather_segments_into (defined in csrc/cpu/gather.cpp). Only checked_repeat_ends and
// raise_bad_segment read tensor data.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace rarekit {

// Bytes per row (along dim 0), from the shape: also for a tensor of no rows.
inline int64_t row_bytes_of(const at::Tensor& tensor) {
  return static_cast<int64_t>(tensor.element_size()) *
         c10::multiply_integers(tensor.sizes().begin() + 1, tensor.sizes().end());
}

// source with a row dimension; 1-D int64 indices on the device of source.
void check_gather_arguments(const at::Tensor& source, const at::Tensor& indices);

// A fresh contiguous tensor of source's dtype and device, of shape (indices.numel(), *source.shape[1:]).
at::Tensor empty_gather_output(const at::Tensor& source, const at::Tensor& indices);

// rarekit::repeat_rows_into: source with a row dimension; 1-D int64 repeats, one per source row; out
// contiguous, of source's dtype and row shape, not overlapping source; all on one device.
void check_repeat_arguments(const at::Tensor& source, const at::Tensor& repeats, const at::Tensor& out);

// Raises ValueError unless the host array repeats (count entries) is >= 0 and sums to total; returns
// its inclusive prefix sums.
std::vector<int64_t> checked_repeat_ends(const int64_t* repeats, int64_t count, int64_t total);

// rarekit::gather_segments_into: values with a row dimension; 1-D int64 starts and out_offsets (one more
// than starts); out contiguous, of values' dtype and row shape, not overlapping values; all on one device.
void check_segment_arguments(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                             const at::Tensor& out);

// Raises the ValueError of output segment j, which a kernel found ill formed (tensors on any device:
// reads three of their entries).
[[noreturn]] void raise_bad_segment(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                                    const at::Tensor& out, int64_t j);

}  // namespace rarekit
