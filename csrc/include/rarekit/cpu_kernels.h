// Raw-pointer CPU kernels compiled once per ISA (csrc/cpu/isa/*.cpp, see setup.py) and chosen at
// run time by csrc/cpu/isa_dispatch.cpp. Each kernel family is a table of function pointers; each
// ISA object defines one table per family, named <family>_<isa>.
#pragma once
#include <cstdint>

#include "rarekit/cross_entropy_math.h"

#define RAREKIT_CAT_(a, b) a##_##b
#define RAREKIT_CAT(a, b) RAREKIT_CAT_(a, b)

namespace rarekit::cpu {

// The integer id dtypes rarekit::count accepts, in the order of the tables below.
enum IdType { kUInt8, kInt8, kInt16, kInt32, kInt64, kUInt16, kUInt32, kNumIdTypes };

// Adds the ids in [0, n) to `hist` (num_bins int32 slots; the caller keeps n < 2^31) and returns
// how many ids were out of [0, num_bins) and not ignore_index.
using HistogramFn = int64_t (*)(const void* ids, int64_t n, int64_t num_bins, bool has_ignore,
                                int64_t ignore_index, int32_t* hist);

struct CountKernels {
  HistogramFn histogram[kNumIdTypes];
};

// Logit dtypes of the per-ISA cross-entropy kernels, in the order of the tables below (float64
// logits take the scalar double kernels of csrc/cpu/cross_entropy.cpp).
enum FloatType { kFloat32, kBFloat16, kFloat16, kNumFloatTypes };

// Contiguous (rows, num_classes) logits; weight, adjust, margin (nullable), row_terms and losses in the
// accumulator type Acc (float, or double for float64 logits).
template <typename Acc>
struct CrossEntropyArgsT {
  CrossEntropyConfig config;
  const void* logits;
  const int64_t* target;
  const Acc* weight;
  const Acc* adjust;
  const Acc* margin;       // target_margin m: z'_y = z_y + a_y - m_y on the target only
  Acc* losses;             // forward: per-row loss
  Acc* row_terms;          // forward writes, backward reads: kRowTermCount values per row
  void* grad;              // forward: the inplace gradient (may alias logits) or null; backward: output
  const Acc* grad_scale;   // forward with grad: one scale for every row
  const Acc* grad_losses;  // backward: upstream gradient per row
};
using CrossEntropyArgs = CrossEntropyArgsT<float>;

// Returns the first row whose target is out of range and not ignore_index, or -1.
using CrossEntropyForwardFn = int64_t (*)(const CrossEntropyArgs& args, int64_t begin, int64_t end);
using CrossEntropyBackwardFn = void (*)(const CrossEntropyArgs& args, int64_t begin, int64_t end);

struct CrossEntropyKernels {
  CrossEntropyForwardFn forward[kNumFloatTypes];
  CrossEntropyBackwardFn backward[kNumFloatTypes];
};

// Writes out[j] = bucket[bounded(random_bits(base, j), size)] for j in [first, last): the draws with
// replacement of rarekit::draw_from_buckets from one bucket of `size` >= 1 entries (rarekit/sampling_math.h).
using DrawRunFn = void (*)(const int64_t* bucket, int64_t size, uint64_t base, int64_t first, int64_t last,
                           int64_t* out);

struct SamplingKernels {
  DrawRunFn draw_run;
};

#define RAREKIT_DECLARE_ISA_TABLES(Family)   \
  extern const Family RAREKIT_CAT(Family, baseline); \
  extern const Family RAREKIT_CAT(Family, avx2);     \
  extern const Family RAREKIT_CAT(Family, avx512);

RAREKIT_DECLARE_ISA_TABLES(CountKernels)
RAREKIT_DECLARE_ISA_TABLES(CrossEntropyKernels)
RAREKIT_DECLARE_ISA_TABLES(SamplingKernels)

// The ISAs this binary holds, best last, and the one in use (set_cpu_isa overrides the choice).
enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
Isa active_isa();
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
void set_active_isa(Isa isa);

template <typename Family>
const Family& pick(const Family& baseline, const Family& avx2, const Family& avx512) {
  switch (active_isa()) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return baseline;
  }
}

const CountKernels& count_kernels();
const SamplingKernels& sampling_kernels();
const CrossEntropyKernels& cross_entropy_kernels();

}  // namespace rarekit::cpu
