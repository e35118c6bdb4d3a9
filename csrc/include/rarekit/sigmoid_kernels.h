// The sigmoid family's per-ISA CPU kernels (csrc/cpu/isa/sigmoid_kernels.cpp), chosen at run time
// by csrc/cpu/sigmoid.cpp like the other families of rarekit/cpu_kernels.h. No torch headers.
#pragma once
#include <cstdint>

#include "rarekit/cpu_kernels.h"
#include "rarekit/sigmoid_math.h"

namespace rarekit::cpu {

using SigmoidArgs = SigmoidArgsT<float>;

// Runs the elements [begin, end) of the flattened input; returns the sum of their losses.
using SigmoidRangeFn = double (*)(const SigmoidArgs& args, int64_t begin, int64_t end);

struct SigmoidKernels {
  SigmoidRangeFn run[kNumFloatTypes];
};

RAREKIT_DECLARE_ISA_TABLES(SigmoidKernels)

}  // namespace rarekit::cpu
