// Cross-entropy row kernels, compiled once per ISA (see setup.py). One pass per row for the
// statistics (online max and sum-exp over L1-sized blocks), one pass for the gradient.
#include <cmath>
#include <cstring>
#include <limits>

#include "rarekit/cpu_kernels.h"
#include "rarekit/cpu_row_reductions.h"
#include "rarekit/cpu_vector_math.h"
#include "rarekit/cross_entropy_math.h"

namespace rarekit::cpu {
namespace {

// z'_y = z_y + a_y - m_y: the target's logit with its margin (m: target_margin, may be null)
template <typename T>
float load_target(const T* row, const CrossEntropyArgs& args, int64_t target) {
  const float logit = load_adjusted(row, args.adjust, target);
  return args.margin ? logit - args.margin[target] : logit;
}

// Loss and gradient terms of one row whose target is in range: one pass over the row in blocks,
// each block read twice while it is in cache (online softmax across blocks). With a target margin,
// the target's block is read in the pieces around it and z'_y added on its own, so no sum that held
// the unmargined z_y is corrected afterwards (that subtraction cancels when the target dominates).
// With `exps` (rows of at most kBlock classes: one block, so one offset), exp(z'_k - max) is kept in
// exps[k] for row_gradient.
template <typename T>
float row_loss(const T* row, int64_t target, const CrossEntropyArgs& args, CrossEntropyRowTerms<float>* terms,
               float* exps) {
  const CrossEntropyConfig& config = args.config;
  const int64_t classes = config.num_classes;
  const float* smooth_weight = per_class_smoothing(config) ? args.weight : nullptr;
  const bool smoothing = config.label_smoothing > 0.0f;
  const float target_logit = load_target(row, args, target);
  const int64_t margined = args.margin ? target : -1;  // the class read on its own, or none
  float max = kNegInf, sum_exp = 0.0f, smooth_sum = 0.0f, shift = 0.0f;
  for (int64_t start = 0; start < classes; start += kBlock) {
    const int64_t end = classes - start < kBlock ? classes : start + kBlock;
    const bool split = margined >= start && margined < end;
    float block_best;
    if (split) {
      const float before = block_max(row, args.adjust, start, margined);
      const float after = block_max(row, args.adjust, margined + 1, end);
      block_best = before > after ? before : after;
      block_best = target_logit > block_best ? target_logit : block_best;
    } else {
      block_best = block_max(row, args.adjust, start, end);
    }
    if (start == 0 && std::isfinite(block_best)) shift = block_best;
    if (block_best > max) {  // rescale what was summed against the old max
      if (max != kNegInf) sum_exp *= exp_scalar(max - block_best);
      max = block_best;
    }
    const float offset = max == kNegInf ? 0.0f : max;
    if (split) {
      const float target_exp = exp_scalar(target_logit - offset);
      if (exps) exps[margined] = target_exp;
      sum_exp += block_sum_exp(row, args.adjust, start, margined, offset, exps) + target_exp +
                 block_sum_exp(row, args.adjust, margined + 1, end, offset, exps);
      if (smoothing) {
        smooth_sum += block_smooth_sum(row, args.adjust, smooth_weight, start, margined, shift) +
                      (smooth_weight ? smooth_weight[margined] : 1.0f) * (target_logit - shift) +
                      block_smooth_sum(row, args.adjust, smooth_weight, margined + 1, end, shift);
      }
    } else {
      sum_exp += block_sum_exp(row, args.adjust, start, end, offset, exps);
      if (smoothing) smooth_sum += block_smooth_sum(row, args.adjust, smooth_weight, start, end, shift);
    }
  }
  const float w_y = args.weight ? args.weight[target] : 1.0f;
  return cross_entropy_row(config, max == kNegInf ? 0.0f : max, std::log(sum_exp), target_logit, smooth_sum, shift,
                           w_y, terms);
}

// out_k = scale (coef_p p_k - coef_v v'_k - [k = target] coef_y); out may alias row. p_k comes from
// exps[k] = exp(z'_k - max) where row_loss kept them, else from the row again.
template <typename T>
void row_gradient(const T* row, int64_t target, const CrossEntropyRowTerms<float>& terms, float scale,
                  const CrossEntropyArgs& args, const float* exps, T* out) {
  const int64_t classes = args.config.num_classes;
  const float* smooth_weight = per_class_smoothing(args.config) ? args.weight : nullptr;
  const float coef_p = terms.coef_p * scale, coef_v = terms.coef_v * scale, max_logit = terms.max_logit;
  const float target_grad = coef_p * exp_scalar(load_target(row, args, target) - max_logit) -
                            coef_v * (smooth_weight ? smooth_weight[target] : 1.0f) - terms.coef_y * scale;
  int64_t k = 0;
  for (; k + kFloats16 <= classes; k += kFloats16) {
    const Floats16 smooth = smooth_weight ? coef_v * load16(smooth_weight + k) : broadcast16(coef_v);
    const Floats16 p = exps ? load16(exps + k) : exp16(load_adjusted16(row, args.adjust, k) - max_logit);
    store16(out + k, coef_p * p - smooth);
  }
  if (k < classes) {
    const int64_t count = classes - k;
    const Floats16 smooth = smooth_weight ? coef_v * load_partial16(smooth_weight + k, count, 0.0f) : broadcast16(coef_v);
    const Floats16 p = exps ? load_partial16(exps + k, count, 0.0f)
                            : exp16(load_adjusted_partial16(row, args.adjust, k, count, kNegInf) - max_logit);
    store_partial16(out + k, coef_p * p - smooth, count);
  }
  store(out + target, target_grad);  // computed before the row was overwritten (out may alias row)
}

template <typename T>
void zero_row(T* out, int64_t classes) {
  for (int64_t k = 0; k < classes; ++k) store(out + k, 0.0f);
}

// ---- Few classes (C <= kFewClasses): 16 rows at a time, one per vector lane. A block of rows is
// transposed into lanes[k] (class k of the 16 rows), so the max, the sum of exponentials and the
// whole per-row math of cross_entropy_row run once per 16 rows instead of once per row, and the
// targets, their weights and the saved row terms are gathered once per block.
// Measured fwd+bwd on one thread (fp32, weighted), this kernel against the row-at-a-time one: C = 2:
// 13 ms vs 61 ms (2^20 rows); C = 10: 41 vs 148 ms (2^20); C = 32: 25 vs 31 ms (2^18); C = 64: 24 vs
// 23 ms and C = 100: 37 vs 33 ms (2^17), where the transposition costs more than the per-row math.
constexpr int64_t kFewClasses = 32;
constexpr int kLanes = kFloats16;

// cross_entropy_row's operations on 16 rows at once.
struct LaneMath {
  using Scalar = float;
  static Floats16 splat(double value) { return broadcast16(static_cast<float>(value)); }
  static Floats16 select(Ints16 mask, Floats16 if_true, Floats16 if_false) { return mask ? if_true : if_false; }
  static Floats16 exp(Floats16 x) { return exp16(x); }
  static Floats16 expm1(Floats16 x) { return expm1_16(x); }
  static Floats16 pow(Floats16 x, Floats16 y) { return exp16(y * log16(x)); }  // x in [0, 1] here
};

// 16 targets as int32 lanes: `counted` (in [0, classes) and not ignore_index), `bad` (neither in range
// nor ignore_index), and the targets themselves where counted, -1 elsewhere. Compared as two vectors of
// 8 int64 (one AVX-512 register each: a 16-lane int64 vector is lowered to scalar compares).
struct TargetLanes {
  Ints16 counted, bad, target;

  TargetLanes(const int64_t* targets, int64_t classes, int64_t ignore_index) {
    Ints8 counted_half[2], bad_half[2], target_half[2];
    for (int half = 0; half < 2; ++half) {
      Longs8 y;
      std::memcpy(&y, targets + 8 * half, sizeof(y));
      const Longs8 kept = y != Longs8{} + ignore_index;
      const Longs8 in_range = (y >= 0) & (y < Longs8{} + classes);
      counted_half[half] = __builtin_convertvector(in_range & kept, Ints8);
      bad_half[half] = __builtin_convertvector(~in_range & kept, Ints8);
      target_half[half] = __builtin_convertvector(y, Ints8);
    }
    counted = join(counted_half), bad = join(bad_half);
    target = counted ? join(target_half) : Ints16{} - 1;
  }

  static Ints16 join(const Ints8* halves) {
    return __builtin_shufflevector(halves[0], halves[1], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
};

// The rows [first, first + count) of a block, count <= 16: their adjusted logits z' by class (the
// target's with its margin), their targets (-1 where ignored or out of range) and which lanes hold a
// row with an in-range target. A whole block (16 rows) loads its targets as one vector, and with 2 or
// 4 classes its logits as 2 or 4 vectors regrouped by shuffles (rows_to_columns); a partial block, and
// the logits of other class counts, go one value at a time. `whole`: the block's per-row results can
// be stored as vectors (16 rows, each counted or ignored: no target out of range).
template <int kClasses, typename T>
struct RowBlock {
  static constexpr int64_t kMaxClasses = kClasses > 0 ? kClasses : kFewClasses;
  static constexpr bool kShuffled = kClasses == 2 || kClasses == 4;
  Floats16 lanes[kMaxClasses];
  Ints16 target;
  Ints16 valid;
  int64_t classes;
  int count;
  bool whole = false;

  RowBlock(const CrossEntropyArgs& args, int64_t first, int rows) : classes(kClasses > 0 ? kClasses : args.config.num_classes), count(rows) {
    const T* logits = static_cast<const T*>(args.logits) + first * classes;
    if constexpr (kShuffled) {
      if (count == kLanes) {
        Floats16 row_vectors[kClasses];
        for (int j = 0; j < kClasses; ++j) row_vectors[j] = load16(logits + j * kLanes);
        rows_to_columns<kClasses>(row_vectors, lanes);
      } else {
        load_each(logits);
      }
    } else {
      load_each(logits);
    }
    if (args.adjust) {
      for (int64_t k = 0; k < classes; ++k) lanes[k] += args.adjust[k];
    }
    const int64_t ignore_index = args.config.ignore_index;
    if (count == kLanes) {
      const TargetLanes lanes_of(args.target + first, classes, ignore_index);
      valid = lanes_of.counted, target = lanes_of.target;
      whole = !any_lane(lanes_of.bad);
    } else {
      target = Ints16{} - 1;
      valid = Ints16{};
      for (int r = 0; r < count; ++r) {
        const int64_t y = args.target[first + r];
        if (y >= 0 && y < classes && y != ignore_index) target[r] = static_cast<int32_t>(y), valid[r] = -1;
      }
    }
    if (args.margin) {  // z'_y = z_y + a_y - m_y, on the one element of each row it concerns
      for (int64_t k = 0; k < classes; ++k) lanes[k] -= target == static_cast<int32_t>(k) ? broadcast16(args.margin[k]) : Floats16{};
    }
  }

  void load_each(const T* logits) {
    if (count < kLanes) {
      for (int64_t k = 0; k < classes; ++k) lanes[k] = Floats16{};
    }
    for (int r = 0; r < count; ++r) {
      for (int64_t k = 0; k < classes; ++k) lanes[k][r] = to_float(logits[r * classes + k]);
    }
  }

  // z'_y (0 in lanes without a valid target) and w_y (1 without weights)
  Floats16 target_logit() const {
    Floats16 out{};
    for (int64_t k = 0; k < classes; ++k) out = target == static_cast<int32_t>(k) ? lanes[k] : out;
    return out;
  }
  Floats16 target_weight(const float* weight) const {
    Floats16 out = broadcast16(1.0f);
    if (weight) {
      for (int64_t k = 0; k < classes; ++k) out = target == static_cast<int32_t>(k) ? broadcast16(weight[k]) : out;
    }
    return out;
  }

  // out row r, class k = scale_r (coef_p p_k - coef_v v'_k - [k = y_r] coef_y), 0 in lanes without a
  // valid target; the same operations, in the same order, as row_gradient.
  void write_gradient(const CrossEntropyRowTerms<Floats16>& terms, Floats16 scale, const float* smooth_weight,
                      T* out) const {
    const Floats16 coef_p = terms.coef_p * scale, coef_v = terms.coef_v * scale, coef_y = terms.coef_y * scale;
    Floats16 grad[kMaxClasses];
    for (int64_t k = 0; k < classes; ++k) {
      const Floats16 smooth = smooth_weight ? coef_v * smooth_weight[k] : coef_v;
      Floats16 g = coef_p * exp16(lanes[k] - terms.max_logit) - smooth;
      g = target == static_cast<int32_t>(k) ? g - coef_y : g;
      grad[k] = valid ? g : Floats16{};
    }
    if constexpr (kShuffled) {
      if (count == kLanes) {
        Floats16 rows[kClasses];
        columns_to_rows<kClasses>(grad, rows);
        for (int j = 0; j < kClasses; ++j) store16(out + j * kLanes, rows[j]);
        return;
      }
    }
    for (int r = 0; r < count; ++r) {
      for (int64_t k = 0; k < classes; ++k) store(out + r * classes + k, grad[k][r]);
    }
  }
};

static_assert(kRowTermCount == 4, "the row terms of 16 rows move as 4 vectors (columns_to_rows<4>)");

// flatten: the row math (cross_entropy_row, exp16, log16) inlined into the block loop, where GCC kept
// them as calls that pass 16-lane vectors through the stack.
template <int kClasses, typename T>
__attribute__((flatten)) int64_t few_class_forward(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  const CrossEntropyConfig& config = args.config;
  const float* smooth_weight = per_class_smoothing(config) ? args.weight : nullptr;
  const bool smoothing = config.label_smoothing > 0.0;
  int64_t first_bad_row = -1;
  for (int64_t first = begin; first < end; first += kLanes) {
    const int count = static_cast<int>(end - first < kLanes ? end - first : kLanes);
    const RowBlock<kClasses, T> block(args, first, count);
    const int64_t classes = block.classes;
    Floats16 max = broadcast16(kNegInf);
    for (int64_t k = 0; k < classes; ++k) max = block.lanes[k] > max ? block.lanes[k] : max;  // NaN ignored
    const Floats16 shift = max - max == 0.0f ? max : Floats16{};  // the max where finite, else 0
    const Floats16 offset = max == kNegInf ? Floats16{} : max;
    Floats16 sum_exp{}, smooth_sum{};
    for (int64_t k = 0; k < classes; ++k) sum_exp += exp16(block.lanes[k] - offset);
    if (smoothing) {
      for (int64_t k = 0; k < classes; ++k) {
        smooth_sum += smooth_weight ? smooth_weight[k] * (block.lanes[k] - shift) : block.lanes[k] - shift;
      }
    }
    CrossEntropyRowTerms<Floats16> terms;
    const Floats16 loss = cross_entropy_row<Floats16, LaneMath>(config, offset, log16(sum_exp), block.target_logit(),
                                                               smooth_sum, shift, block.target_weight(args.weight), &terms);
    terms.max_logit = block.valid ? terms.max_logit : Floats16{};
    terms.coef_p = block.valid ? terms.coef_p : Floats16{};
    terms.coef_y = block.valid ? terms.coef_y : Floats16{};
    terms.coef_v = block.valid ? terms.coef_v : Floats16{};
    if (block.whole) {  // 16 rows, each counted or ignored: the losses and row terms as vectors
      store16(args.losses + first, block.valid ? loss : Floats16{});
      const Floats16 columns[kRowTermCount] = {terms.max_logit, terms.coef_p, terms.coef_y, terms.coef_v};
      Floats16 rows[kRowTermCount];
      columns_to_rows<kRowTermCount>(columns, rows);
      for (int j = 0; j < kRowTermCount; ++j) store16(args.row_terms + first * kRowTermCount + j * kLanes, rows[j]);
    } else {
      for (int r = 0; r < count; ++r) {
        const int64_t i = first + r, y = args.target[i];
        float row_loss = block.valid[r] ? loss[r] : 0.0f;
        if (!block.valid[r] && y != config.ignore_index) {  // reported by the caller; NaN keeps it from passing
          row_loss = std::numeric_limits<float>::quiet_NaN();
          if (first_bad_row < 0) first_bad_row = i;
        }
        args.losses[i] = row_loss;
        float* saved = args.row_terms + i * kRowTermCount;
        saved[0] = terms.max_logit[r], saved[1] = terms.coef_p[r], saved[2] = terms.coef_y[r], saved[3] = terms.coef_v[r];
      }
    }
    if (args.grad != nullptr) {  // inplace_backward: the gradient overwrites the logits rows
      block.write_gradient(terms, broadcast16(args.grad_scale[0]), smooth_weight,
                           static_cast<T*>(args.grad) + first * classes);
    }
  }
  return first_bad_row;
}

template <int kClasses, typename T>
__attribute__((flatten)) void few_class_backward(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  const float* smooth_weight = per_class_smoothing(args.config) ? args.weight : nullptr;
  for (int64_t first = begin; first < end; first += kLanes) {
    const int count = static_cast<int>(end - first < kLanes ? end - first : kLanes);
    const RowBlock<kClasses, T> block(args, first, count);
    CrossEntropyRowTerms<Floats16> terms{Floats16{}, Floats16{}, Floats16{}, Floats16{}};
    Floats16 scale{};
    if (count == kLanes) {
      Floats16 rows[kRowTermCount], columns[kRowTermCount];
      for (int j = 0; j < kRowTermCount; ++j) rows[j] = load16(args.row_terms + first * kRowTermCount + j * kLanes);
      rows_to_columns<kRowTermCount>(rows, columns);
      terms.max_logit = columns[0], terms.coef_p = columns[1], terms.coef_y = columns[2], terms.coef_v = columns[3];
      scale = load16(args.grad_losses + first);
    } else {
      for (int r = 0; r < count; ++r) {
        const float* saved = args.row_terms + (first + r) * kRowTermCount;
        terms.max_logit[r] = saved[0], terms.coef_p[r] = saved[1], terms.coef_y[r] = saved[2], terms.coef_v[r] = saved[3];
        scale[r] = args.grad_losses[first + r];
      }
    }
    block.write_gradient(terms, scale, smooth_weight, static_cast<T*>(args.grad) + first * block.classes);
  }
}

// The few-class kernels with the class count as a constant where it is small enough to unroll.
template <typename T>
int64_t few_class_forward_any(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  switch (args.config.num_classes) {
    case 2: return few_class_forward<2, T>(args, begin, end);
    case 3: return few_class_forward<3, T>(args, begin, end);
    case 4: return few_class_forward<4, T>(args, begin, end);
    default: return few_class_forward<0, T>(args, begin, end);
  }
}

template <typename T>
void few_class_backward_any(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  switch (args.config.num_classes) {
    case 2: return few_class_backward<2, T>(args, begin, end);
    case 3: return few_class_backward<3, T>(args, begin, end);
    case 4: return few_class_backward<4, T>(args, begin, end);
    default: return few_class_backward<0, T>(args, begin, end);
  }
}

template <typename T>
int64_t forward_rows(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  const CrossEntropyConfig& config = args.config;
  if (config.num_classes <= kFewClasses) return few_class_forward_any<T>(args, begin, end);
  const T* logits = static_cast<const T*>(args.logits);
  // a row of one block, whose gradient is written here: its exponentials are kept for the gradient
  float kept_exps[kBlock];
  float* exps = args.grad != nullptr && config.num_classes <= kBlock ? kept_exps : nullptr;
  int64_t first_bad_row = -1;
  for (int64_t i = begin; i < end; ++i) {
    const T* row = logits + i * config.num_classes;
    const int64_t target = args.target[i];
    CrossEntropyRowTerms<float> terms{0.0f, 0.0f, 0.0f, 0.0f};
    float loss = 0.0f;
    const bool ignored = target == config.ignore_index;
    const bool in_range = target >= 0 && target < config.num_classes;
    if (!ignored && in_range) {
      loss = row_loss(row, target, args, &terms, exps);
    } else if (!ignored) {  // reported by the caller; NaN keeps the row from passing silently
      loss = std::numeric_limits<float>::quiet_NaN();
      if (first_bad_row < 0) first_bad_row = i;
    }
    args.losses[i] = loss;
    float* saved = args.row_terms + i * kRowTermCount;
    saved[0] = terms.max_logit, saved[1] = terms.coef_p, saved[2] = terms.coef_y, saved[3] = terms.coef_v;
    if (args.grad != nullptr) {  // inplace_backward: the gradient overwrites the logits row
      T* out = static_cast<T*>(args.grad) + i * config.num_classes;
      if (!ignored && in_range) {
        row_gradient(row, target, terms, args.grad_scale[0], args, exps, out);
      } else {
        zero_row(out, config.num_classes);
      }
    }
  }
  return first_bad_row;
}

template <typename T>
void backward_rows(const CrossEntropyArgs& args, int64_t begin, int64_t end) {
  const CrossEntropyConfig& config = args.config;
  if (config.num_classes <= kFewClasses) return few_class_backward_any<T>(args, begin, end);
  const T* logits = static_cast<const T*>(args.logits);
  for (int64_t i = begin; i < end; ++i) {
    T* out = static_cast<T*>(args.grad) + i * config.num_classes;
    const int64_t target = args.target[i];
    if (target == config.ignore_index || target < 0 || target >= config.num_classes) {
      zero_row(out, config.num_classes);
      continue;
    }
    const float* saved = args.row_terms + i * kRowTermCount;
    const CrossEntropyRowTerms<float> terms{saved[0], saved[1], saved[2], saved[3]};
    row_gradient(logits + i * config.num_classes, target, terms, args.grad_losses[i], args, nullptr, out);
  }
}

}  // namespace

extern const CrossEntropyKernels RAREKIT_CAT(CrossEntropyKernels, RAREKIT_ISA);
const CrossEntropyKernels RAREKIT_CAT(CrossEntropyKernels, RAREKIT_ISA) = {
    {forward_rows<float>, forward_rows<BFloat16Bits>, forward_rows<HalfBits>},
    {backward_rows<float>, backward_rows<BFloat16Bits>, backward_rows<HalfBits>},
};

}  // namespace rarekit::cpu
