"""The fused sigmoid family, forward + backward to the logits' gradient, fp32, against the eager formulas.

Cases (issue 21; CPU shapes, CUDA 4x the rows):
- BCE with pos_weight, N=2^16 x C=1000 multi-hot (1 % positives): rarekit.binary_cross_entropy_with_logits
  against F.binary_cross_entropy_with_logits (target >= 2x);
- sigmoid focal loss, N=2^14 x C=1000: rarekit.sigmoid_focal_loss against torchvision.ops.sigmoid_focal_loss's
  formula, run eagerly (target >= 4x);
- ASL, N=2^14 x C=1000: rarekit.AsymmetricLoss against timm's AsymmetricLossMultiLabel formula (target >= 4x);
- binary focal loss, N=2^22 logits: as the sigmoid focal case (target >= 4x).
Contenders are timed round-robin; each ratio is reported as the median over rounds of (eager / rarekit) within
a round, with its minimum and maximum (the spread on a shared machine). A clone of the logits is the copy floor.
"""
import statistics

import torch
import torch.nn.functional as F

import rarekit
from common import parse_args, report, seconds_interleaved


def torchvision_sigmoid_focal_loss(inputs, targets, alpha: float = 0.25, gamma: float = 2.0):
    """torchvision.ops.sigmoid_focal_loss (torchvision/ops/focal_loss.py), reduction="mean"."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).mean()


def timm_asymmetric_loss(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """timm's AsymmetricLossMultiLabel.forward (timm/loss/asymmetric_loss.py), gradients through the focusing."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos, xs_neg = x_sigmoid, (1 - x_sigmoid + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()


def gradient_step(loss_fn, logits, target):
    return torch.autograd.grad(loss_fn(logits, target), logits)[0]


def cases_for(device: torch.device, quick: bool) -> list:
    scale = (4 if device.type == "cuda" else 1) / (16 if quick else 1)
    multi_label, detection, binary = int(2**16 * scale), int(2**14 * scale), int(2**22 * scale)
    asl = rarekit.AsymmetricLoss(gamma_pos=0.0, gamma_neg=4.0, clip=0.05, reduction="sum")
    return [
        ("BCE with pos_weight", (multi_label, 1000), 0.01, True,
         lambda pw: lambda x, y: rarekit.binary_cross_entropy_with_logits(x, y, pos_weight=pw),
         lambda pw: lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw),
         "F.binary_cross_entropy_with_logits"),
        ("sigmoid focal loss", (detection, 1000), 0.01, False,
         lambda pw: lambda x, y: rarekit.sigmoid_focal_loss(x, y, reduction="mean"),
         lambda pw: torchvision_sigmoid_focal_loss, "torchvision formula (eager)"),
        ("asymmetric loss (ASL)", (detection, 1000), 0.01, False,
         lambda pw: asl, lambda pw: timm_asymmetric_loss, "timm formula (eager)"),
        ("binary focal loss", (binary,), 0.01, False,
         lambda pw: lambda x, y: rarekit.sigmoid_focal_loss(x, y, reduction="mean"),
         lambda pw: torchvision_sigmoid_focal_loss, "torchvision formula (eager)"),
    ]


def main() -> None:
    args = parse_args(__doc__)
    device = torch.device(args.device)
    cases = []
    for title, shape, positives, with_pos_weight, ours_for, theirs_for, peer in cases_for(device, args.quick):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(shape, generator=gen).to(device).requires_grad_()
        target = (torch.rand(shape, generator=gen) < positives).float().to(device)
        pos_weight = (torch.rand(shape[-1], generator=gen) * 50 + 1).to(device) if with_pos_weight else None
        peers = {"rarekit": lambda fn=ours_for(pos_weight): gradient_step(fn, logits, target),
                 peer: lambda fn=theirs_for(pos_weight): gradient_step(fn, logits, target),
                 "clone of the logits (floor)": lambda: logits.detach().clone()}
        times = seconds_interleaved(peers, device, args.repeat)
        per_round = [theirs / ours for ours, theirs in zip(times["rarekit"], times[peer])]
        medians = {name: statistics.median(seconds) for name, seconds in times.items()}
        cases.append({
            "case": f"fp32 {'x'.join(map(str, shape))} {title}, {positives:.0%} positives, forward+backward",
            "median_ms": {name: seconds * 1e3 for name, seconds in medians.items()},
            "ratios": {f"speed-up vs {peer} (median of rounds)": statistics.median(per_round),
                       "rarekit / copy floor": medians["rarekit"] / medians["clone of the logits (floor)"]},
            "speed-up spread": {"min": min(per_round), "max": max(per_round)},
        })
        del logits, target
    report("sigmoid", device, cases, args.out)


if __name__ == "__main__":
    main()
