"""Pure-PyTorch reference of the sigmoid loss family (csrc/include/rarekit/sigmoid_math.h): the
readable specification the kernels are tested against, and the path that serves them when the
extension is not built. Differentiable by autograd in the input and the target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_loss_elements(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                          pos_weight: torch.Tensor | None = None, alpha: float | torch.Tensor | None = None,
                          gamma_pos: float = 0.0, gamma_neg: float = 0.0, clip: float = 0.0,
                          pt_form: bool = False) -> torch.Tensor:
    """Per-element loss in float32 (float64 for float64 inputs). With p = σ(x), q = 1 - p,
    p_m = max(p - clip, 0), r = 1 - p_m, α₊ = α and α₋ = 1 - α (both 1 when α is None)::

        linear form:  ℓ = -w [α₊ pw y q^γ₊ log p + α₋ (1 - y) p_m^γ₋ log r]
        p_t form:     ℓ = -w α_t u^g [pw y log p + (1 - y) log r],  α_t = α₊ y + α₋ (1 - y),
                      u = y q + (1 - y) p_m,  g = γ₊ y + γ₋ (1 - y)

    The linear form with γ = 0, no α and clip = 0 is torch's ``binary_cross_entropy_with_logits``; the
    p_t form is torchvision's ``sigmoid_focal_loss`` (clip = 0, γ₊ = γ₋) and timm's
    ``AsymmetricLossMultiLabel`` (no α). Both agree for y ∈ {0, 1}.
    """
    accumulator = torch.float64 if input.dtype == torch.float64 else torch.float32
    x, y = input.to(accumulator), target.to(accumulator)
    log_p, log_q = F.logsigmoid(x), F.logsigmoid(-x)
    p, q = torch.sigmoid(x), torch.sigmoid(-x)
    if clip > 0:
        p_m = (p - clip).clamp(min=0)
        log_r = torch.log((q + clip).clamp(max=1))
    else:
        p_m, log_r = p, log_q
    a_pos: torch.Tensor | float
    a_neg: torch.Tensor | float
    if alpha is None:
        a_pos = a_neg = 1.0
    else:
        a_pos = alpha.to(accumulator) if isinstance(alpha, torch.Tensor) else float(alpha)
        a_neg = 1 - a_pos
    pw = pos_weight.to(accumulator) if pos_weight is not None else 1.0
    if pt_form:
        alpha_t = a_pos * y + a_neg * (1 - y)
        log_term = pw * y * log_p + (1 - y) * log_r
        loss = -alpha_t * log_term
        if gamma_pos or gamma_neg:
            loss = loss * (y * q + (1 - y) * p_m).pow(gamma_pos * y + gamma_neg * (1 - y))
    else:
        m_pos = torch.exp(gamma_pos * log_q) if gamma_pos else 1.0
        m_neg = p_m.pow(gamma_neg) if gamma_neg else 1.0
        loss = -(a_pos * pw * y * m_pos * log_p + a_neg * (1 - y) * m_neg * log_r)
    return loss * weight.to(accumulator) if weight is not None else loss


def sigmoid_loss(input, target, weight, pos_weight, alpha_tensor, alpha, gamma_pos, gamma_neg, clip, pt_form,
                 reduction: int) -> torch.Tensor:
    """The reference path of ``rarekit::sigmoid_loss_forward``'s loss: per element in the input dtype
    (reduction 0), or its mean (1) or sum (2) in the accumulator dtype."""
    losses = sigmoid_loss_elements(input, target, weight, pos_weight, alpha_tensor if alpha_tensor is not None
                                   else alpha, gamma_pos, gamma_neg, clip, pt_form)
    if reduction == 0:
        return losses.to(input.dtype)
    return losses.mean() if reduction == 1 else losses.sum()
