// CUDA implementations of the row copies, for rows of any dtype, copied as bytes in the widest word (16,
// 8, 4, 2 or 1 bytes) that the row size and both base addresses allow; one grid-stride kernel over
// (output row, word) each.
//  - rarekit::gather_rows: out[j] = source[indices[j]]. An index outside [0, rows) leaves its output
//    row zero and raises a device flag; with check=true the flag is read back (one host
//    synchronization) and raises IndexError, with check=false nothing waits for it.
//  - rarekit::gather_segments_into: one thread per output segment copies its rows word by word
//    (rarekit/gather_math.h); an ill-formed segment is not written and raises the flag, read back as
//    above with check=true (ValueError).
//  - rarekit::repeat_rows_into: output row j is source row bucket_of(ends, j) (rarekit/sampling_math.h),
//    ends the inclusive prefix sums of repeats, computed on the device. check=true copies repeats to the
//    host first (one synchronization) and raises the CPU's ValueError; with check=false, rows past
//    repeats' total (inconsistent repeats) are left zero, and no read leaves source.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "rarekit/gather_math.h"
#include "rarekit/gather_op.h"
#include "rarekit/sampling_math.h"

namespace rarekit::cuda {
namespace {

constexpr int kThreads = 256;

template <typename Word>
__global__ void gather_rows_kernel(const Word* __restrict__ source, int64_t rows, int64_t words,
                                   const int64_t* __restrict__ indices, int64_t total, Word* __restrict__ out,
                                   unsigned long long* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t count = total * words;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count; k += stride) {
    const int64_t j = words == 1 ? k : k / words, word = k - j * words;  // one-word rows: no division
    const int64_t row = indices[j];
    if (row >= 0 && row < rows) {
      out[k] = source[row * words + word];
    } else {
      out[k] = Word{};
      atomicMin(first_bad, static_cast<unsigned long long>(j));
    }
  }
}

// Rows of zero bytes: only the indices are checked.
__global__ void check_indices_kernel(int64_t rows, const int64_t* __restrict__ indices, int64_t total,
                                     unsigned long long* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += stride) {
    if (indices[j] < 0 || indices[j] >= rows) atomicMin(first_bad, static_cast<unsigned long long>(j));
  }
}

template <typename Word>
__global__ void repeat_rows_kernel(const Word* __restrict__ source, int64_t rows, int64_t words,
                                   const int64_t* __restrict__ ends, int64_t total, Word* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t count = total * words;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count; k += stride) {
    const int64_t j = words == 1 ? k : k / words, word = k - j * words;
    const int64_t row = bucket_of(ends, rows, j);
    out[k] = row < rows ? source[row * words + word] : Word{};
  }
}

template <typename Word>
__global__ void gather_segments_kernel(const Word* __restrict__ values, int64_t value_rows, int64_t words,
                                       const int64_t* __restrict__ starts, const int64_t* __restrict__ out_offsets,
                                       int64_t total, int64_t out_rows, Word* __restrict__ out,
                                       unsigned long long* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < total; j += stride) {
    SegmentBounds bounds;
    if (!segment_bounds(starts, value_rows, out_offsets, out_rows, j, bounds)) {
      atomicMin(first_bad, static_cast<unsigned long long>(j));
      continue;
    }
    const Word* from = values + bounds.from * words;
    Word* to = out + bounds.to * words;
    for (int64_t k = 0, count = bounds.length * words; k < count; ++k) to[k] = from[k];
  }
}

int grid_size(int64_t count) {
  const int64_t resident =
      static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 2048 / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((count + kThreads - 1) / kThreads, resident)));
}

template <typename Word>
void launch(const at::Tensor& source, int64_t row_bytes, const at::Tensor& indices, const at::Tensor& out,
            unsigned long long* first_bad) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(Word)), total = indices.numel();
  const int64_t count = total * words;
  if (count == 0) return;
  gather_rows_kernel<Word><<<grid_size(count), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const Word*>(source.const_data_ptr()), source.size(0), words, indices.const_data_ptr<int64_t>(),
      total, static_cast<Word*>(out.mutable_data_ptr()), first_bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// A device int64 that kernels lower (atomicMin) to the first bad position they meet; kNone while none is.
struct FirstBadFlag {
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  at::Tensor value;
  explicit FirstBadFlag(const at::Tensor& like) : value(at::full({1}, kNone, like.options().dtype(at::kLong))) {}
  unsigned long long* data() { return reinterpret_cast<unsigned long long*>(value.mutable_data_ptr<int64_t>()); }
  int64_t read() const { return value.item<int64_t>(); }  // waits for the kernels: one host synchronization
};

bool fits(int64_t row_bytes, const void* a, const void* b, int64_t size) {
  return row_bytes % size == 0 && reinterpret_cast<uintptr_t>(a) % size == 0 &&
         reinterpret_cast<uintptr_t>(b) % size == 0;
}

// Calls launch(Word{}) with the widest word (16, 8, 4, 2 or 1 bytes) that divides row_bytes and aligns
// both addresses.
template <typename Launch>
void with_widest_word(int64_t row_bytes, const void* from, const void* to, const Launch& launch) {
  if (fits(row_bytes, from, to, 16)) {
    launch(uint4{});
  } else if (fits(row_bytes, from, to, 8)) {
    launch(uint64_t{});
  } else if (fits(row_bytes, from, to, 4)) {
    launch(uint32_t{});
  } else if (fits(row_bytes, from, to, 2)) {
    launch(uint16_t{});
  } else {
    launch(uint8_t{});
  }
}

at::Tensor gather_rows_cuda(const at::Tensor& source, const at::Tensor& indices, bool check) {
  check_gather_arguments(source, indices);
  const c10::cuda::CUDAGuard guard(source.device());
  const at::Tensor rows_c = source.contiguous(), indices_c = indices.contiguous();
  at::Tensor out = empty_gather_output(source, indices);
  const int64_t rows = rows_c.size(0);
  const int64_t row_bytes = row_bytes_of(rows_c);  // a source of no rows still has rows of this size to zero
  FirstBadFlag first_bad(indices);
  unsigned long long* flag = first_bad.data();
  const void* from = rows_c.const_data_ptr();
  const void* to = out.const_data_ptr();
  if (row_bytes == 0) {
    if (indices_c.numel() > 0) {
      check_indices_kernel<<<grid_size(indices_c.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          rows, indices_c.const_data_ptr<int64_t>(), indices_c.numel(), flag);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  } else {
    with_widest_word(row_bytes, from, to,
                     [&](auto word) { launch<decltype(word)>(rows_c, row_bytes, indices_c, out, flag); });
  }
  if (check) {
    const int64_t bad = first_bad.read();
    TORCH_CHECK_INDEX(bad == FirstBadFlag::kNone, "rarekit.gather_rows: indices[", bad, "] = ", indices_c[bad].item<int64_t>(),
                      " is outside the ", rows, " rows of source");
  }
  return out;
}

template <typename Word>
void launch_repeat(const at::Tensor& source, int64_t row_bytes, const at::Tensor& ends, const at::Tensor& out) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(Word)), total = out.size(0);
  const int64_t count = total * words;
  if (count == 0) return;
  repeat_rows_kernel<Word><<<grid_size(count), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const Word*>(source.const_data_ptr()), source.size(0), words, ends.const_data_ptr<int64_t>(), total,
      static_cast<Word*>(out.mutable_data_ptr()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void repeat_rows_into_cuda(const at::Tensor& source, const at::Tensor& repeats, const at::Tensor& out, bool check) {
  check_repeat_arguments(source, repeats, out);
  const c10::cuda::CUDAGuard guard(source.device());
  const at::Tensor rows_c = source.contiguous(), repeats_c = repeats.contiguous();
  if (check) {
    const at::Tensor host = repeats_c.cpu();
    checked_repeat_ends(host.const_data_ptr<int64_t>(), host.numel(), out.size(0));
  }
  const at::Tensor ends = repeats_c.cumsum(0);
  const int64_t row_bytes = row_bytes_of(out);
  const void* from = rows_c.const_data_ptr();
  const void* to = out.const_data_ptr();
  if (row_bytes == 0) return;
  with_widest_word(row_bytes, from, to,
                   [&](auto word) { launch_repeat<decltype(word)>(rows_c, row_bytes, ends, out); });
}

template <typename Word>
void launch_segments(const at::Tensor& values, int64_t row_bytes, const at::Tensor& starts,
                     const at::Tensor& out_offsets, const at::Tensor& out, unsigned long long* first_bad) {
  const int64_t total = starts.numel();
  if (total == 0) return;
  gather_segments_kernel<Word><<<grid_size(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<const Word*>(values.const_data_ptr()), values.size(0), row_bytes / static_cast<int64_t>(sizeof(Word)),
      starts.const_data_ptr<int64_t>(), out_offsets.const_data_ptr<int64_t>(), total, out.size(0),
      static_cast<Word*>(out.mutable_data_ptr()), first_bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gather_segments_into_cuda(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                               const at::Tensor& out, bool check) {
  check_segment_arguments(values, starts, out_offsets, out);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor values_c = values.contiguous(), starts_c = starts.contiguous(),
                   out_offsets_c = out_offsets.contiguous();
  const int64_t row_bytes = row_bytes_of(out);
  FirstBadFlag first_bad(starts);
  unsigned long long* flag = first_bad.data();
  const void* from = values_c.const_data_ptr();
  const void* to = out.const_data_ptr();
  // rows of zero bytes: no word to copy, but every segment is still checked
  with_widest_word(row_bytes, from, to, [&](auto word) {
    launch_segments<decltype(word)>(values_c, row_bytes, starts_c, out_offsets_c, out, flag);
  });
  if (check) {
    const int64_t bad = first_bad.read();
    if (bad != FirstBadFlag::kNone) raise_bad_segment(values_c, starts_c, out_offsets_c, out, bad);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) {
  m.impl("gather_rows", &gather_rows_cuda);
  m.impl("repeat_rows_into", &repeat_rows_into_cuda);
  m.impl("gather_segments_into", &gather_segments_into_cuda);
}

}  // namespace rarekit::cuda
