// The per-ISA kernel tables' index of a floating logits dtype (float64 runs the scalar double kernels).
#pragma once
#include <c10/core/ScalarType.h>

#include "rarekit/cpu_kernels.h"

namespace rarekit::cpu {

inline FloatType float_type(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16: return kBFloat16;
    case at::kHalf: return kFloat16;
    default: return kFloat32;
  }
}

}  // namespace rarekit::cpu
