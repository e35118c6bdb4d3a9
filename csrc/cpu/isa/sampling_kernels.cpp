// The draws with replacement of rarekit::draw_from_buckets, compiled once per ISA (RAREKIT_ISA names the
// copy; see setup.py). With AVX-512DQ, a block of positions is computed first, eight lanes at a time
// (64-bit multiplies and integer/double conversions are AVX-512DQ instructions), then the bucket is read
// at them; without, one loop does both (the split is slower there: measured 37 against 27 ms for 15.5M
// draws with AVX2). The values are bit-identical on every path: the double arithmetic of `bounded` is
// exact or correctly rounded in any lane.
#include <algorithm>
#include <cstdint>

#include "rarekit/cpu_kernels.h"
#include "rarekit/sampling_math.h"

namespace rarekit::cpu {
namespace {

#if defined(__AVX512DQ__)
constexpr int64_t kBlock = 256;  // positions per block: 2 KiB on the stack, in L1

void draw_run(const int64_t* bucket, int64_t size, uint64_t base, int64_t first, int64_t last, int64_t* out) {
  int64_t positions[kBlock];
  for (int64_t j = first; j < last; j += kBlock) {
    const int64_t count = std::min(kBlock, last - j);
    for (int64_t k = 0; k < count; ++k) positions[k] = bounded(random_bits(base, j + k), size);
    for (int64_t k = 0; k < count; ++k) out[j + k] = bucket[positions[k]];
  }
}
#else
void draw_run(const int64_t* bucket, int64_t size, uint64_t base, int64_t first, int64_t last, int64_t* out) {
  for (int64_t j = first; j < last; ++j) out[j] = bucket[bounded(random_bits(base, j), size)];
}
#endif

}  // namespace

extern const SamplingKernels RAREKIT_CAT(SamplingKernels, RAREKIT_ISA);
const SamplingKernels RAREKIT_CAT(SamplingKernels, RAREKIT_ISA) = {draw_run};

}  // namespace rarekit::cpu
