// Counter-based random numbers and bucket search of the resampling kernels (rarekit::draw_from_buckets),
// shared by the CPU and CUDA implementations and mirrored by rarekit/reference.py. Every random
// number is a pure function of (seed, counter), so the draws do not depend on the thread count,
// the launch configuration or the device.
#pragma once
#include "rarekit/common.h"

namespace rarekit {

// What a CUDA draw with check=false writes where the arguments are inconsistent (a bucket outside
// offsets, or more draws than the bucket holds): INT64_MIN, which every torch index op rejects, where
// -1 would silently select the last row.
constexpr int64_t kInvalidDraw = static_cast<int64_t>(uint64_t{1} << 63);

// splitmix64's increment, 2^64 / φ (Steele, Lea & Flood 2014, "Fast Splittable Pseudorandom Number Generators").
constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

// splitmix64's output function (Stafford's Mix13 variant of the MurmurHash3 finalizer).
RAREKIT_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The state a seed starts from: mix64(seed).
RAREKIT_HOST_DEVICE uint64_t stream_base(int64_t seed) { return mix64(static_cast<uint64_t>(seed)); }

// The counter-th output of the splitmix64 generator started at `base`: mix64(base + (counter + 1) γ).
RAREKIT_HOST_DEVICE uint64_t random_bits(uint64_t base, int64_t counter) {
  return mix64(base + (static_cast<uint64_t>(counter) + 1) * kGoldenGamma);
}

// floor(u n) with u = (bits >> 11) 2^-53 in [0, 1): uniform on [0, n) for n > 0, each value's
// probability off by at most 2^-53 relative (the 53-bit uniform double of Vigna's xoshiro notes).
// Both products are exact or correctly rounded doubles, so every device gets the same value (no add
// follows a multiply, so nvcc's FMA contraction, --fmad under --use_fast_math, cannot change them).
RAREKIT_HOST_DEVICE int64_t bounded(uint64_t bits, int64_t n) {
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;
  const int64_t value = static_cast<int64_t>(u * static_cast<double>(n));
  return value < n ? value : n - 1;
}

// The sort key of sample `index` in a draw without replacement: 63 random bits, a non-negative int64.
RAREKIT_HOST_DEVICE int64_t random_key(uint64_t base, int64_t index) {
  return static_cast<int64_t>(random_bits(base, index) >> 1);
}

// The first b in [0, count) with ends[b] > position, or count: the bucket of output `position`
// when ends holds the inclusive prefix sums of the per-bucket draw counts.
RAREKIT_HOST_DEVICE int64_t bucket_of(const int64_t* ends, int64_t count, int64_t position) {
  int64_t low = 0, high = count;
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (ends[middle] > position) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  return low;
}

}  // namespace rarekit
