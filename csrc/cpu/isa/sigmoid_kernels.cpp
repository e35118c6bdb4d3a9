// Sigmoid-family element kernels, compiled once per ISA (see setup.py): 16 elements at a time through
// sigmoid_element (rarekit/sigmoid_math.h) with a vector exp and log, one pass over input and target
// that writes the losses and/or the gradients it is given pointers for.
#include <cstring>

#include "rarekit/cpu_vector_math.h"
#include "rarekit/sigmoid_kernels.h"

namespace rarekit::cpu {
namespace {

// log16 and exp16: the shared vector math of cpu_vector_math.h.
struct VectorMath {
  static Floats16 exp(Floats16 x) { return exp16(x); }
  static Floats16 log(Floats16 x) { return log16(x); }
  // log(1 + e) for e in [0, 1], given 1 / (1 + e): the log of the rounded sum, corrected by the part
  // of e the sum lost
  static Floats16 log1p(Floats16 e, Floats16 inverse) {
    const Floats16 sum = 1.0f + e;
    return log16(sum) + (e - (sum - 1.0f)) * inverse;
  }
};

// `count` (1 to 16) values as 16 lanes (the missing ones 0), and back.
template <typename T>
static inline Floats16 load_lanes(const T* values, int64_t count) {
  if (count == kFloats16) return load16(values);
  T padded[kFloats16];
  std::memset(static_cast<void*>(padded), 0, sizeof(padded));
  std::memcpy(static_cast<void*>(padded), values, count * sizeof(T));
  return load16(padded);
}

template <typename T>
static inline void store_lanes(T* out, Floats16 vector, int64_t count) {
  if (count == kFloats16) return store16(out, vector);
  T padded[kFloats16];
  store16(padded, vector);
  std::memcpy(static_cast<void*>(out), padded, count * sizeof(T));
}

// The operand's values at flat positions [position, position + count) of row `row`, column `col`.
static inline Floats16 operand_lanes(const SigmoidOperand<float>& operand, int64_t row, int64_t col,
                                     int64_t position, int64_t count) {
  switch (operand.kind) {
    case kOperandScalar: return broadcast16(operand.data[0]);
    case kOperandColumn: return load_lanes(operand.data + col, count);
    case kOperandRow: return broadcast16(operand.data[row]);
    case kOperandFull: return load_lanes(operand.data + position, count);
    default: return broadcast16(1.0f);
  }
}

constexpr int kFlushVectors = 64;  // partial sums go to double every 1024 elements

template <typename T>
double run_range(const SigmoidArgs& args, int64_t begin, int64_t end) {
  const auto [input, target, losses, grad_input, grad_target, grad_losses] = typed_pointers<T>(args);
  const bool grads = grad_input != nullptr || grad_target != nullptr;
  const bool has_alpha = args.alpha.kind != kOperandNone;
  Ints16 lane_index;
  for (int lane = 0; lane < kFloats16; ++lane) lane_index[lane] = lane;
  double total = 0.0;
  Floats16 partial{};
  int pending = 0;
  for (int64_t position = begin; position < end;) {
    const int64_t row = position / args.cols;
    const int64_t row_end = (row + 1) * args.cols < end ? (row + 1) * args.cols : end;
    for (int64_t col = position - row * args.cols; position < row_end;) {
      const int64_t count = row_end - position < kFloats16 ? row_end - position : kFloats16;
      Floats16 a_pos, a_neg;
      alpha_factors<Floats16, float>(has_alpha, operand_lanes(args.alpha, row, col, position, count), &a_pos, &a_neg);
      const SigmoidTerms<Floats16> terms = sigmoid_element<VectorMath, float>(
          args.params, load_lanes(input + position, count), load_lanes(target + position, count),
          operand_lanes(args.weight, row, col, position, count),
          operand_lanes(args.pos_weight, row, col, position, count), a_pos, a_neg, grads);
      if (losses) store_lanes(losses + position, terms.loss, count);
      partial += count == kFloats16 ? terms.loss : (lane_index < static_cast<int32_t>(count) ? terms.loss : Floats16{});
      if (grads) {
        const Floats16 scale =
            grad_losses ? load_lanes(grad_losses + position, count) : broadcast16(args.grad_scale);
        if (grad_input) store_lanes(grad_input + position, scale * terms.grad_input, count);
        if (grad_target) store_lanes(grad_target + position, scale * terms.grad_target, count);
      }
      position += count;
      col += count;
      if (++pending == kFlushVectors) {
        total += horizontal_sum(partial);
        partial = Floats16{};
        pending = 0;
      }
    }
  }
  return total + horizontal_sum(partial);
}

}  // namespace

extern const SigmoidKernels RAREKIT_CAT(SigmoidKernels, RAREKIT_ISA);
const SigmoidKernels RAREKIT_CAT(SigmoidKernels, RAREKIT_ISA) = {
    {run_range<float>, run_range<BFloat16Bits>, run_range<HalfBits>},
};

}  // namespace rarekit::cpu
