// Argument checks of the resampling ops, shared by the CPU and CUDA implementations (defined in
// csrc/cpu/sampling.cpp). They read dtypes, shapes and devices only, never data: no host sync.
#pragma once
#include <ATen/ATen.h>

namespace rarekit {

// rarekit::class_buckets: 1-D integer codes, num_classes >= 0.
void check_bucket_arguments(const at::Tensor& codes, int64_t num_classes);

// rarekit::draw_from_buckets_into: 1-D int64 order, offsets (B + 1), draw_counts (B) and contiguous out,
// all on one device.
void check_draw_arguments(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                          const at::Tensor& out);

}  // namespace rarekit
