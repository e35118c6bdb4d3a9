// CUDA registration of rarekit::linear_cross_entropy_forward (csrc/include/rarekit/linear_cross_entropy_op.h):
// cuBLAS matmuls and the CUDA cross-entropy row kernel, reached through the dispatcher.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "rarekit/linear_cross_entropy_op.h"

namespace rarekit::cuda {
namespace {

LinearCrossEntropyResult linear_cross_entropy_forward_cuda(
    const at::Tensor& hidden, const at::Tensor& classifier, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& logit_adjustment,
    const std::optional<at::Tensor>& target_margin, const std::optional<at::Tensor>& grad_scale, int64_t ignore_index,
    double label_smoothing, bool target_weighted, double focal_gamma, double z_loss, std::optional<double> softcap,
    int64_t chunk_rows, std::array<bool, 4> grad_mask, bool check) {
  const c10::cuda::CUDAGuard guard(hidden.device());
  return linear_cross_entropy_forward(hidden, classifier, bias, target, weight, logit_adjustment, target_margin,
                                      grad_scale, ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss,
                                      softcap, chunk_rows, grad_mask, check);
}

}  // namespace

TORCH_LIBRARY_IMPL(rarekit, CUDA, m) { m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward_cuda); }

}  // namespace rarekit::cuda
