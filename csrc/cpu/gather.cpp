// CPU implementation of rarekit::gather_rows: out[j] = source[indices[j]] for rows of any dtype.
// A row is copied as its bytes (one fixed-size copy for rows of 1, 2, 4, 8 or 16 bytes), so there is no
// dtype dispatch and no conversion: numpy arrays of any fixed-size dtype are gathered through a uint8 view. Output rows are split over the threads in contiguous ranges; each index is
// checked against the number of source rows before its row is read.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>

#include "rarekit/gather_op.h"
#include "rarekit/torch_utils.h"

namespace rarekit {

void check_gather_arguments(const at::Tensor& source, const at::Tensor& indices) {
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
  at::parallel_for(0, total, grain, [&](int64_t first, int64_t last) {
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
  const int64_t row_bytes = rows == 0 ? 0 : static_cast<int64_t>(rows_c.nbytes()) / rows;
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

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CPU, m) { m.impl("gather_rows", &gather_rows_cpu); }

}  // namespace cpu
}  // namespace rarekit
