"""A dual tensor (forward-mode AD) handed to a torch.ops.rarekit op directly raises NotImplementedError naming
the argument: the kernels cannot carry a tangent, and the op returned a result whose tangent was silently zero.
The rarekit functions built on the ops keep their forward-mode derivatives (tests/losses hold their values)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import rarekit
from rarekit import _backend

pytestmark = pytest.mark.skipif(_backend._C is None, reason="the checks are in the compiled ops")

CONFIG = (-100, 0.0, False, 0.0, 0.0)  # ignore_index, label_smoothing, target_weighted, focal_gamma, z_loss


def op_calls(dual, plain, target):
    """name of the refused argument -> a call of a raw op with the dual tensor in that place"""
    ops = torch.ops.rarekit
    rows, classes = plain.shape
    return {
        "cross_entropy_forward": ("logits", lambda: ops.cross_entropy_forward(dual, target, None, None, None, *CONFIG,
                                                                              True)),
        "cross_entropy_reduced": ("logits", lambda: ops.cross_entropy_reduced(dual, target, None, None, None, None,
                                                                              *CONFIG, 1, True, True)),
        "cross_entropy_forward adjustment": ("logit_adjustment", lambda: ops.cross_entropy_forward(
            plain, target, None, fwAD.make_dual(torch.zeros(classes), torch.ones(classes)), None, *CONFIG, True)),
        "sigmoid_loss_forward": ("input", lambda: ops.sigmoid_loss_forward(
            dual, torch.rand(rows, classes), None, None, None, None, 0.0, 0.0, 0.0, False, 1, True)),
        "gather_rows": ("source", lambda: ops.gather_rows(dual, torch.tensor([0, 2]), True)),
        "count": ("weights", lambda: ops.count(target, classes, None,
                                               fwAD.make_dual(torch.ones(rows), torch.ones(rows)), True)),
    }


@pytest.mark.parametrize("name", ["cross_entropy_forward", "cross_entropy_reduced", "cross_entropy_forward adjustment",
                                  "sigmoid_loss_forward", "gather_rows", "count"])
def test_raw_ops_refuse_dual_tensors(name):
    plain = torch.randn(6, 4)
    target = torch.randint(0, 4, (6,))
    with fwAD.dual_level():
        dual = fwAD.make_dual(plain, torch.randn(6, 4))
        argument, call = op_calls(dual, plain, target)[name]
        with pytest.raises(NotImplementedError, match=f"{argument} is a dual tensor"):
            call()


def test_the_functions_keep_their_forward_mode_derivative():
    plain = torch.randn(6, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (6,))
    tangent = torch.randn(6, 4, dtype=torch.float64)
    with fwAD.dual_level():
        dual = fwAD.make_dual(plain, tangent)
        for function, reference in ((lambda x: rarekit.cross_entropy(x, target),
                                     lambda x: torch.nn.functional.cross_entropy(x, target)),
                                    (lambda x: rarekit.binary_cross_entropy_with_logits(x, torch.ones_like(x)),
                                     lambda x: torch.nn.functional.binary_cross_entropy_with_logits(x, torch.ones_like(x)))):
            got = fwAD.unpack_dual(function(dual)).tangent
            expected = fwAD.unpack_dual(reference(dual)).tangent
            torch.testing.assert_close(got, expected)
