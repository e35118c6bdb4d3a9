"""The CPU gradient buffer cache (csrc/cpu/buffer_cache.cpp): a freed gradient of 4 MiB or more is kept
and written again by the next step's kernel, never while a tensor still holds it, and every value of
the reused buffer is rewritten."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit import _backend

pytestmark = pytest.mark.skipif(_backend._C is None, reason="the buffer cache is part of the compiled extension")

ROWS, CLASSES = 16384, 100  # a 6.5 MB float32 gradient: above the 4 MiB the cache starts at


def logits_gradient(logits, target, weight=None, **options):
    logits = logits.detach().requires_grad_()
    rarekit.cross_entropy(logits, target, weight, **options).backward()
    return logits.grad


def eager_gradient(logits, target, weight=None, **options):
    logits = logits.detach().requires_grad_()
    F.cross_entropy(logits, target, weight, **options).backward()
    return logits.grad


def test_a_freed_gradient_is_reused_and_fully_rewritten():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(ROWS, CLASSES, generator=gen)
    target = torch.randint(0, CLASSES, (ROWS,), generator=gen)
    rarekit.release_cpu_buffers()
    first = logits_gradient(logits * 3, target)
    address = first.data_ptr()
    first.fill_(float("nan"))  # what the next step must overwrite everywhere
    del first
    # ignored rows take the zero-row path: they too must be written
    target_ignored = target.clone()
    target_ignored[::7] = -100
    second = logits_gradient(logits, target_ignored)
    assert second.data_ptr() == address
    torch.testing.assert_close(second, eager_gradient(logits, target_ignored))


def test_a_live_gradient_is_never_handed_out_again():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(ROWS, CLASSES, generator=gen)
    target = torch.randint(0, CLASSES, (ROWS,), generator=gen)
    weight = torch.rand(CLASSES, generator=gen) + 0.1
    kept = [logits_gradient(logits, target, weight) for _ in range(4)]
    assert len({grad.data_ptr() for grad in kept}) == 4
    expected = eager_gradient(logits, target, weight)
    for grad in kept:
        torch.testing.assert_close(grad, expected)


def test_sigmoid_gradients_reuse_buffers_with_correct_values():
    gen = torch.Generator().manual_seed(2)
    inputs = torch.randn(4096, 512, generator=gen)
    targets = (torch.rand(4096, 512, generator=gen) < 0.05).float()
    grads = []
    for _ in range(3):
        leaf = inputs.detach().requires_grad_()
        rarekit.binary_cross_entropy_with_logits(leaf, targets).backward()
        grads.append(leaf.grad.clone())
        del leaf
    leaf = inputs.detach().requires_grad_()
    F.binary_cross_entropy_with_logits(leaf, targets).backward()
    for grad in grads:
        torch.testing.assert_close(grad, leaf.grad)


def test_release_frees_what_was_kept():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(ROWS, CLASSES, generator=gen)
    target = torch.randint(0, CLASSES, (ROWS,), generator=gen)
    rarekit.release_cpu_buffers()
    logits_gradient(logits, target)  # freed at once: kept
    assert rarekit.release_cpu_buffers() >= ROWS * CLASSES * 4
    assert rarekit.release_cpu_buffers() == 0


def test_small_gradients_are_not_cached():
    rarekit.release_cpu_buffers()
    logits_gradient(torch.randn(256, 10), torch.randint(0, 10, (256,)))
    assert rarekit.release_cpu_buffers() == 0


def test_the_environment_switch_turns_the_cache_off():
    code = ("import torch, rarekit\n"
            f"x = torch.randn({ROWS}, {CLASSES}, requires_grad=True)\n"
            f"rarekit.cross_entropy(x, torch.randint(0, {CLASSES}, ({ROWS},))).backward()\n"
            "del x\n"
            "print(rarekit.release_cpu_buffers())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAREKIT_CPU_BUFFER_CACHE": "0", "RAREKIT_FORCE_REFERENCE": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
