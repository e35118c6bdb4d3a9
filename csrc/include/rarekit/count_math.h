// Binning rule of rarekit::count, shared by the CPU, per-ISA and CUDA kernels.
#pragma once
#include "rarekit/common.h"

namespace rarekit {

// Where an id goes: a bin in [0, num_bins), or one of the two drop codes below.
constexpr int64_t kIgnoredId = -1;
constexpr int64_t kOutOfRangeId = -2;

template <typename T>
RAREKIT_HOST_DEVICE int64_t bin_of(T id, int64_t num_bins, bool has_ignore, int64_t ignore_index) {
  const int64_t value = static_cast<int64_t>(id);
  if (has_ignore && value == ignore_index) return kIgnoredId;
  // one unsigned compare covers value < 0 and value >= num_bins
  return static_cast<uint64_t>(value) < static_cast<uint64_t>(num_bins) ? value : kOutOfRangeId;
}

}  // namespace rarekit
