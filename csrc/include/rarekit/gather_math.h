// Bounds of the segment copies of rarekit::gather_segments_into, shared by the CPU and CUDA kernels.
#pragma once
#include <cstdint>

#include "rarekit/common.h"

namespace rarekit {

// Output segment j: values rows [from, from + length) go to out rows [to, to + length).
struct SegmentBounds {
  int64_t from, to, length;
};

// Whether output segment j is well formed, filling `bounds` if so: out_offsets[j] <= out_offsets[j + 1]
// within the out_rows rows of out, and the run of that length from starts[j] within the value_rows rows
// of values.
RAREKIT_HOST_DEVICE bool segment_bounds(const int64_t* starts, int64_t value_rows, const int64_t* out_offsets,
                                        int64_t out_rows, int64_t j, SegmentBounds& bounds) {
  const int64_t from = starts[j], to = out_offsets[j], end = out_offsets[j + 1];
  if (to < 0 || end < to || end > out_rows || from < 0 || from > value_rows - (end - to)) return false;
  bounds = {from, to, end - to};
  return true;
}

}  // namespace rarekit
