// Shared by the CPU and CUDA implementations of rarekit::gather_rows (defined in csrc/cpu/gather.cpp).
// Neither reads tensor data: no host sync.
#pragma once
#include <ATen/ATen.h>

namespace rarekit {

// source with a row dimension; 1-D int64 indices on the device of source.
void check_gather_arguments(const at::Tensor& source, const at::Tensor& indices);

// A fresh contiguous tensor of source's dtype and device, of shape (indices.numel(), *source.shape[1:]).
at::Tensor empty_gather_output(const at::Tensor& source, const at::Tensor& indices);

}  // namespace rarekit
