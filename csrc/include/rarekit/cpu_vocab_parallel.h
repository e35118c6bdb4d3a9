// The per-ISA CPU kernels of rarekit::vocab_parallel_statistics (csrc/cpu/isa/vocab_parallel_kernels.cpp),
// chosen at run time as the other families of rarekit/cpu_kernels.h.
#pragma once
#include <cstdint>

#include "rarekit/cpu_kernels.h"
#include "rarekit/vocab_parallel_math.h"

namespace rarekit::cpu {

// Contiguous (rows, classes) logits of the shard whose first class is global class vocab_start;
// adjust and smooth_weight (v', null: all ones) are the shard's slices in the accumulator type Acc.
template <typename Acc>
struct VocabParallelArgsT {
  const void* logits;
  int64_t rows, classes;
  const int64_t* target;  // global ids
  int64_t vocab_start, ignore_index;
  const Acc* adjust;
  const Acc* smooth_weight;
  Acc smooth_total;  // V' = Σ v'_k over the shard
  int statistics;    // 3, or 4 with label smoothing
  Acc* out;          // (statistics, rows)
};
using VocabParallelArgs = VocabParallelArgsT<float>;

// Writes the partials of the rows [begin, end).
using VocabParallelStatisticsFn = void (*)(const VocabParallelArgs& args, int64_t begin, int64_t end);

struct VocabParallelKernels {
  VocabParallelStatisticsFn statistics[kNumFloatTypes];
};

RAREKIT_DECLARE_ISA_TABLES(VocabParallelKernels)

const VocabParallelKernels& vocab_parallel_kernels();

}  // namespace rarekit::cpu
