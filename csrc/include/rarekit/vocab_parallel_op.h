// Argument checks and preparation of rarekit::vocab_parallel_statistics, shared by the CPU and CUDA
// operators: every argument's shape, dtype, device and range is checked before a kernel touches memory.
#pragma once
#include <ATen/ATen.h>

#include <limits>
#include <optional>

#include "rarekit/cross_entropy_op.h"
#include "rarekit/vocab_parallel_math.h"

namespace rarekit {

struct VocabParallelInputs {
  at::Tensor logits;         // (rows, classes), contiguous
  at::Tensor target;         // (rows,) int64 global ids
  at::Tensor adjust;         // (classes,) in the accumulator dtype, or undefined
  at::Tensor smooth_weight;  // v' (classes,) in the accumulator dtype, or undefined (all ones)
  at::Tensor out;            // (statistics, rows) in the accumulator dtype
  int64_t vocab_start;
  int64_t ignore_index;
  int statistics;  // 3, or 4 with label smoothing
};

inline VocabParallelInputs prepare_vocab_parallel(const at::Tensor& logits, const at::Tensor& target,
                                                  const std::optional<at::Tensor>& weight,
                                                  const std::optional<at::Tensor>& adjust, int64_t vocab_start,
                                                  int64_t ignore_index, double label_smoothing, bool target_weighted) {
  constexpr const char* op = "rarekit.vocab_parallel_statistics";
  refuse_forward_ad(logits, "logits", op);
  refuse_forward_ad(adjust, "logit_adjustment", op);
  TORCH_CHECK_VALUE(logits.dim() == 2, op, ": logits must be this shard's (rows, classes) slice, got shape ",
                    logits.sizes());
  const auto type = logits.scalar_type();
  TORCH_CHECK_TYPE(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf || type == at::kDouble, op,
                   ": logits must be float32, float64, bfloat16 or float16, got ", type);
  const int64_t rows = logits.size(0), classes = logits.size(1);
  check_class_targets(target, rows, logits.device(), op);
  check_class_vector(weight, "weight", classes, logits.device(), op);
  check_class_vector(adjust, "logit_adjustment", classes, logits.device(), op);
  TORCH_CHECK_VALUE(vocab_start >= 0 && vocab_start <= std::numeric_limits<int64_t>::max() - classes, op,
                    ": vocab_start must be >= 0 (the shard's first global class), got ", vocab_start);
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  const at::ScalarType accumulate = accumulator_type(logits);
  VocabParallelInputs inputs;
  inputs.logits = logits.contiguous();
  inputs.target = target.to(at::kLong).contiguous();
  if (adjust) inputs.adjust = adjust->to(accumulate).contiguous();
  inputs.statistics = label_smoothing > 0.0 ? kVocabParallelStatistics : kVocabParallelStatistics - 1;
  if (inputs.statistics > 3 && weight && !target_weighted) inputs.smooth_weight = weight->to(accumulate).contiguous();
  inputs.vocab_start = vocab_start;
  inputs.ignore_index = ignore_index;
  inputs.out = at::empty({inputs.statistics, rows}, logits.options().dtype(accumulate));
  if (classes == 0) {  // an empty shard adds nothing: (-inf, 0, 0, 0) on every row
    inputs.out.zero_();
    inputs.out[0].fill_(-std::numeric_limits<double>::infinity());
  }
  return inputs;
}

}  // namespace rarekit
