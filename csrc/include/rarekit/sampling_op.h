// Argument checks of the resampling ops, shared by the CPU and CUDA implementations (defined in
// csrc/cpu/sampling.cpp). The first two read dtypes, shapes and devices only, never data: no host sync.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace rarekit {

// rarekit::class_buckets: 1-D integer codes, num_classes >= 0.
void check_bucket_arguments(const at::Tensor& codes, int64_t num_classes);

// rarekit::draw_from_buckets_into: 1-D int64 order, offsets (B + 1), draw_counts (B) and contiguous out,
// all on one device.
void check_draw_arguments(const at::Tensor& order, const at::Tensor& offsets, const at::Tensor& draw_counts,
                          const at::Tensor& out);

// Raises ValueError unless the host arrays offsets (B + 1) and draw_counts (B) describe draws that stay
// inside an order of order_size entries (offsets[0] = 0, non-decreasing, offsets[B] <= order_size;
// 0 <= draw_counts[b], with replacement only from a non-empty bucket, without at most its size;
// Σ draw_counts = total). Returns the inclusive prefix sums of draw_counts. The CUDA operator copies
// the two arrays to the host for it (one synchronization, only with check=true).
std::vector<int64_t> checked_draw_ends(const int64_t* offsets, const int64_t* draw_counts, int64_t buckets,
                                       int64_t order_size, int64_t total, bool replacement);

}  // namespace rarekit
