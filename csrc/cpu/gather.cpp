// CPU implementations of the row copies rarekit::gather_rows (out[j] = source[indices[j]]),
// rarekit::repeat_rows_into (source[b] repeats[b] times, row after row) and rarekit::gather_segments_into
// (variable-length runs of rows, as CSR rows), for rows of any dtype.
// A row is copied as its bytes (one fixed-size copy for rows of 1, 2, 4, 8 or 16 bytes), so there is no
// dtype dispatch and no conversion: numpy arrays of any fixed-size dtype go through a uint8 view.
// Output rows are split over the threads in contiguous ranges; each gather index is checked against
// the number of source rows before its row is read.
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

#include "rarekit/gather_math.h"
#include "rarekit/cpu_parallel.h"
#include "rarekit/gather_op.h"
#include "rarekit/sampling_math.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

void check_gather_arguments(const at::Tensor& source, const at::Tensor& indices) {
  refuse_forward_ad(source, "source", "rarekit.gather_rows");
  TORCH_CHECK_VALUE(source.dim() >= 1, "rarekit.gather_rows: source must have a row dimension, got a 0-d tensor");
  TORCH_CHECK_VALUE(indices.dim() == 1, "rarekit.gather_rows: indices must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong, "rarekit.gather_rows: indices must be int64, got ",
                   indices.scalar_type());
  TORCH_CHECK_VALUE(indices.device() == source.device(), "rarekit.gather_rows: indices must be on the device of "
                    "source (", source.device(), "), got ", indices.device());
}

at::Tensor empty_gather_output(const at::Tensor& source, const at::Tensor& indices) {
  std::vector<int64_t> shape(source.sizes().begin(), source.sizes().end());
  shape[0] = indices.numel();
  return at::empty(shape, source.options().memory_format(at::MemoryFormat::Contiguous));
}

void check_repeat_arguments(const at::Tensor& source, const at::Tensor& repeats, const at::Tensor& out) {
  refuse_forward_ad(source, "source", "rarekit.repeat_rows_into");
  TORCH_CHECK_VALUE(source.dim() >= 1, "rarekit.repeat_rows_into: source must have a row dimension, got a 0-d tensor");
  TORCH_CHECK_TYPE(repeats.scalar_type() == at::kLong, "rarekit.repeat_rows_into: repeats must be int64, got ",
                   repeats.scalar_type());
  TORCH_CHECK_VALUE(repeats.dim() == 1 && repeats.numel() == source.size(0), "rarekit.repeat_rows_into: repeats must "
                    "be 1-D with one entry per row of source (", source.size(0), "), got shape ", repeats.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == source.scalar_type(), "rarekit.repeat_rows_into: out must have the dtype of "
                   "source (", source.scalar_type(), "), got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.dim() == source.dim() && out.sizes().slice(1) == source.sizes().slice(1),
                    "rarekit.repeat_rows_into: out must have source's row shape ", source.sizes().slice(1),
                    ", got shape ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "rarekit.repeat_rows_into: out must be contiguous");
  for (const at::Tensor* tensor : {&repeats, &out}) {
    TORCH_CHECK_VALUE(tensor->device() == source.device(), "rarekit.repeat_rows_into: ",
                      tensor == &out ? "out" : "repeats", " must be on the device of source (", source.device(),
                      "), got ", tensor->device());
  }
  const at::MemOverlapStatus overlap = at::get_overlap_status(out, source);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                    "rarekit.repeat_rows_into: out must not overlap source");
}

std::vector<int64_t> checked_repeat_ends(const int64_t* repeats, int64_t count, int64_t total) {
  std::vector<int64_t> ends(count);
  int64_t sum = 0;
  for (int64_t b = 0; b < count; ++b) {
    TORCH_CHECK_VALUE(repeats[b] >= 0, "rarekit.repeat_rows_into: repeats must be >= 0, got repeats[", b, "] = ",
                      repeats[b]);
    TORCH_CHECK_VALUE(repeats[b] <= total - sum, "rarekit.repeat_rows_into: repeats.sum() must equal the ", total,
                      " rows of out, but repeats[:", b + 1, "] already sums to more");
    sum += repeats[b];
    ends[b] = sum;
  }
  TORCH_CHECK_VALUE(sum == total, "rarekit.repeat_rows_into: repeats.sum() = ", sum, " must equal the ", total,
                    " rows of out");
  return ends;
}

void check_segment_arguments(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                             const at::Tensor& out) {
  refuse_forward_ad(values, "values", "rarekit.gather_segments_into");
  constexpr const char* kOp = "rarekit.gather_segments_into: ";
  TORCH_CHECK_VALUE(values.dim() >= 1, kOp, "values must have a row dimension, got a 0-d tensor");
  for (const auto& [tensor, name] : {std::pair{&starts, "starts"}, std::pair{&out_offsets, "out_offsets"}}) {
    TORCH_CHECK_TYPE(tensor->scalar_type() == at::kLong, kOp, name, " must be a 1-D int64 tensor, got ",
                     tensor->scalar_type());
    TORCH_CHECK_VALUE(tensor->dim() == 1, kOp, name, " must be a 1-D int64 tensor, got shape ", tensor->sizes());
    TORCH_CHECK_VALUE(tensor->device() == values.device(), kOp, name, " must be on the device of values (",
                      values.device(), "), got ", tensor->device());
  }
  TORCH_CHECK_VALUE(out_offsets.numel() == starts.numel() + 1, kOp, "out_offsets must have one entry more than "
                    "starts (", starts.numel(), "), got ", out_offsets.numel());
  TORCH_CHECK_TYPE(out.scalar_type() == values.scalar_type(), kOp, "out must have the dtype of values (",
                   values.scalar_type(), "), got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.dim() == values.dim() && out.sizes().slice(1) == values.sizes().slice(1), kOp,
                    "out must have values' row shape ", values.sizes().slice(1), ", got shape ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), kOp, "out must be contiguous");
  TORCH_CHECK_VALUE(out.device() == values.device(), kOp, "out must be on the device of values (", values.device(),
                    "), got ", out.device());
  const at::MemOverlapStatus overlap = at::get_overlap_status(out, values);
  TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial, kOp,
                    "out must not overlap values");
}

void raise_bad_segment(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                       const at::Tensor& out, int64_t j) {
  const int64_t from = starts[j].item<int64_t>(), to = out_offsets[j].item<int64_t>(),
                end = out_offsets[j + 1].item<int64_t>();
  TORCH_CHECK_VALUE(false, "rarekit.gather_segments_into: segment ", j, " (out_offsets[", j, "] = ", to,
                    ", out_offsets[", j + 1, "] = ", end, ", starts[", j, "] = ", from, ") must be an increasing "
                    "range inside the ", out.size(0), " rows of out, copied from inside the ", values.size(0),
                    " rows of values");
  TORCH_CHECK(false, "unreachable");
}

namespace cpu {
namespace {

// Output bytes per parallel task: smaller outputs are gathered by the calling thread alone, as waking
// another costs more than it saves there (158,600 rows of 8 bytes, on a busy 2-core VM: 0.1 ms on one
// thread, 20 ms on two).
constexpr int64_t kGatherGrainBytes = int64_t{1} << 22;

// Copies rows of row_bytes bytes (kBytes, a compile-time constant, when it is not 0); returns the first
// output position in [first, last) whose index is outside [0, rows), or last if none is.
template <int64_t kBytes>
int64_t gather_range(const char* source, int64_t rows, int64_t row_bytes, const int64_t* indices, int64_t first,
                     int64_t last, char* out) {
  const auto size = static_cast<size_t>(kBytes > 0 ? kBytes : row_bytes);
  for (int64_t j = first; j < last; ++j) {
    const int64_t row = indices[j];
    if (row < 0 || row >= rows) return j;
    std::memcpy(out + j * size, source + row * size, size);
  }
  return last;
}

template <int64_t kBytes>
int64_t gather_all(const void* source, int64_t rows, int64_t row_bytes, const int64_t* indices, int64_t total,
                   void* out) {
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  const int64_t grain = std::max<int64_t>(1, kGatherGrainBytes / std::max<int64_t>(row_bytes, 1));
  parallel_range(0, total, grain, row_bytes, [&](int64_t first, int64_t last) {
    const int64_t stop = gather_range<kBytes>(static_cast<const char*>(source), rows, row_bytes, indices, first, last,
                                              static_cast<char*>(out));
    for (int64_t seen = first_bad.load(); stop < last && stop < seen;) {
      if (first_bad.compare_exchange_weak(seen, stop)) break;
    }
  });
  return first_bad.load();
}

at::Tensor gather_rows_cpu(const at::Tensor& source, const at::Tensor& indices, bool check) {
  (void)check;  // the CPU checks every index as it reads it: there is nothing to skip
  check_gather_arguments(source, indices);
  const at::Tensor rows_c = source.contiguous(), indices_c = indices.contiguous();
  at::Tensor out = empty_gather_output(source, indices);
  advise_huge_pages(out);  // a fresh output costs more in 4 KiB page faults than in copies
  const int64_t rows = rows_c.size(0), total = indices_c.numel();
  const int64_t row_bytes = row_bytes_of(rows_c);
  const int64_t* index = indices_c.const_data_ptr<int64_t>();
  const void* from = rows_c.const_data_ptr();
  void* to = out.mutable_data_ptr();
  int64_t bad;  // rows of one scalar (a column of X, labels) copy as one load and store
  switch (row_bytes) {
    case 1: bad = gather_all<1>(from, rows, row_bytes, index, total, to); break;
    case 2: bad = gather_all<2>(from, rows, row_bytes, index, total, to); break;
    case 4: bad = gather_all<4>(from, rows, row_bytes, index, total, to); break;
    case 8: bad = gather_all<8>(from, rows, row_bytes, index, total, to); break;
    case 16: bad = gather_all<16>(from, rows, row_bytes, index, total, to); break;
    default: bad = gather_all<0>(from, rows, row_bytes, index, total, to);
  }
  TORCH_CHECK_INDEX(bad >= total, "rarekit.gather_rows: indices[", bad, "] = ", bad < total ? index[bad] : 0,
                    " is outside the ", rows, " rows of source");
  return out;
}

// Writes source row b (kBytes, or row_bytes when kBytes is 0) into output rows [ends[b - 1], ends[b]) for
// every b, over contiguous ranges of output rows in parallel.
template <int64_t kBytes>
void repeat_all(const char* source, int64_t row_bytes, const std::vector<int64_t>& ends, char* out) {
  const auto count = static_cast<int64_t>(ends.size());
  const int64_t total = count == 0 ? 0 : ends.back();
  const int64_t grain = std::max<int64_t>(1, kGatherGrainBytes / std::max<int64_t>(row_bytes, 1));
  const auto size = static_cast<size_t>(kBytes > 0 ? kBytes : row_bytes);
  parallel_range(0, total, grain, row_bytes, [&](int64_t first, int64_t last) {
    for (int64_t b = bucket_of(ends.data(), count, first), j = first; j < last; ++b) {
      const char* row = source + b * size;
      for (const int64_t end = std::min(last, ends[b]); j < end; ++j) std::memcpy(out + j * size, row, size);
    }
  });
}

void repeat_rows_into_cpu(const at::Tensor& source, const at::Tensor& repeats, const at::Tensor& out, bool check) {
  (void)check;  // the CPU always checks the repeats, which are on the host
  check_repeat_arguments(source, repeats, out);
  const at::Tensor rows_c = source.contiguous(), repeats_c = repeats.contiguous();
  const std::vector<int64_t> ends = checked_repeat_ends(repeats_c.const_data_ptr<int64_t>(), repeats_c.numel(),
                                                        out.size(0));
  const int64_t row_bytes = row_bytes_of(out);
  const auto* from = static_cast<const char*>(rows_c.const_data_ptr());
  auto* to = static_cast<char*>(out.mutable_data_ptr());
  if (row_bytes == 0) return;
  switch (row_bytes) {  // rows of one scalar (labels) are filled as words
    case 1: repeat_all<1>(from, row_bytes, ends, to); break;
    case 2: repeat_all<2>(from, row_bytes, ends, to); break;
    case 4: repeat_all<4>(from, row_bytes, ends, to); break;
    case 8: repeat_all<8>(from, row_bytes, ends, to); break;
    case 16: repeat_all<16>(from, row_bytes, ends, to); break;
    default: repeat_all<0>(from, row_bytes, ends, to);
  }
}

// Output segments per parallel task (of about two rows each in a sparse matrix's CSR rows).
constexpr int64_t kSegmentGrain = int64_t{1} << 16;
// Segments of up to this many rows (of 4 or 8 bytes) are copied as one fixed-size block.
constexpr int64_t kShortRows = 4;

// Copies output segments [first, last) (rows of kBytes, or row_bytes when kBytes is 0); returns the first
// ill-formed segment in [first, last), or last if none is.
template <int64_t kBytes>
int64_t segment_range(const char* values, int64_t value_rows, int64_t row_bytes, const int64_t* starts,
                      const int64_t* out_offsets, int64_t out_rows, int64_t first, int64_t last, char* out) {
  const auto size = static_cast<size_t>(kBytes > 0 ? kBytes : row_bytes);
  const int64_t range_end = out_offsets[last];  // the next range's first output row: never written here
  for (int64_t j = first; j < last; ++j) {
    SegmentBounds bounds;
    if (!segment_bounds(starts, value_rows, out_offsets, out_rows, j, bounds)) return j;
    // A short segment (CSR rows of a sparse matrix hold a few values) is copied as one block of
    // kShortRows rows, whatever its length: a copy loop of the segment's length mispredicts a branch
    // per segment, which stalls the reads of the following ones (1.7x slower over 15.5M short runs).
    // The surplus rows land on the next segments' output, which they write after; blocks that would
    // reach past this range's output or read past values are copied row by row.
    if (kBytes > 0 && bounds.length <= kShortRows && bounds.to + kShortRows <= range_end &&
        bounds.to + kShortRows <= out_rows && bounds.from + kShortRows <= value_rows) {
      std::memcpy(out + bounds.to * size, values + bounds.from * size, kShortRows * size);
    } else if (kBytes > 0) {
      for (int64_t r = 0; r < bounds.length; ++r) {
        std::memcpy(out + (bounds.to + r) * size, values + (bounds.from + r) * size, size);
      }
    } else {
      std::memcpy(out + bounds.to * size, values + bounds.from * size, bounds.length * size);
    }
  }
  return last;
}

template <int64_t kBytes>
int64_t segment_all(const at::Tensor& values, int64_t row_bytes, const at::Tensor& starts,
                    const at::Tensor& out_offsets, const at::Tensor& out) {
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  const auto* from = static_cast<const char*>(values.const_data_ptr());
  auto* to = static_cast<char*>(out.mutable_data_ptr());
  // bytes per segment: about two rows each, as a sparse matrix's CSR rows
  parallel_range(0, starts.numel(), kSegmentGrain, 2 * row_bytes, [&](int64_t first, int64_t last) {
    const int64_t stop = segment_range<kBytes>(from, values.size(0), row_bytes, starts.const_data_ptr<int64_t>(),
                                               out_offsets.const_data_ptr<int64_t>(), out.size(0), first, last, to);
    for (int64_t seen = first_bad.load(); stop < last && stop < seen;) {
      if (first_bad.compare_exchange_weak(seen, stop)) break;
    }
  });
  return first_bad.load();
}

void gather_segments_into_cpu(const at::Tensor& values, const at::Tensor& starts, const at::Tensor& out_offsets,
                              const at::Tensor& out, bool check) {
  (void)check;  // the CPU checks every segment as it copies it: there is nothing to skip
  check_segment_arguments(values, starts, out_offsets, out);
  const at::Tensor values_c = values.contiguous(), starts_c = starts.contiguous(),
                   out_offsets_c = out_offsets.contiguous();
  const int64_t row_bytes = row_bytes_of(out);
  int64_t bad;
  switch (row_bytes) {  // the values and column indices of a sparse matrix: rows of one scalar
    case 4: bad = segment_all<4>(values_c, row_bytes, starts_c, out_offsets_c, out); break;
    case 8: bad = segment_all<8>(values_c, row_bytes, starts_c, out_offsets_c, out); break;
    default: bad = segment_all<0>(values_c, row_bytes, starts_c, out_offsets_c, out);
  }
  if (bad < starts_c.numel()) raise_bad_segment(values_c, starts_c, out_offsets_c, out, bad);
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) {
  m.impl("gather_rows", &gather_rows_cpu);
  m.impl("repeat_rows_into", &repeat_rows_into_cpu);
  m.impl("gather_segments_into", &gather_segments_into_cpu);
}

}  // namespace cpu
}  // namespace rarekit
