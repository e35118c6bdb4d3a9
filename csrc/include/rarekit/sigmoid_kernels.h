// The sigmoid family's per-ISA CPU kernels (csrc/cpu/isa/sigmoid_kernels.cpp), chosen at run time
// by csrc/cpu/sigmoid.cpp like the other families of rarekit/cpu_kernels.h. No torch headers.
#pragma once
#include <cstdint>

#include "rarekit/cpu_kernels.h"
#include "rarekit/sigmoid_math.h"

namespace rarekit::cpu {

// A broadcast operand over the (rows, cols) view: kind (SigmoidOperandKind) and its values in the
// accumulator type (1 value, cols, rows, or rows * cols).
template <typename Acc>
struct SigmoidOperand {
  const Acc* data;
  int kind;
};

// Contiguous input and target of one dtype T (FloatType), viewed as (rows, cols). Each output
// pointer may be null: losses (per element, dtype T), grad_input and grad_target (dtype T).
// grad_losses (dtype T, per element) or else grad_scale multiplies the gradients.
template <typename Acc>
struct SigmoidArgsT {
  SigmoidParams<Acc> params;
  int64_t rows, cols;
  const void* input;
  const void* target;
  SigmoidOperand<Acc> weight, pos_weight, alpha;
  void* losses;
  void* grad_input;
  void* grad_target;
  const void* grad_losses;
  Acc grad_scale;
};
using SigmoidArgs = SigmoidArgsT<float>;

// Runs the elements [begin, end) of the flattened input; returns the sum of their losses.
using SigmoidRangeFn = double (*)(const SigmoidArgs& args, int64_t begin, int64_t end);

struct SigmoidKernels {
  SigmoidRangeFn run[kNumFloatTypes];
};

RAREKIT_DECLARE_ISA_TABLES(SigmoidKernels)

}  // namespace rarekit::cpu
