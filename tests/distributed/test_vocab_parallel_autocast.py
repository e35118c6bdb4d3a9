"""Under torch.autocast, vocab_parallel_linear_cross_entropy casts its inputs as F.linear does, like
rarekit.linear_cross_entropy: float64 stays float64 (it was cast to the autocast dtype)."""
import pytest
import torch
import torch.nn.functional as F

import rarekit
from rarekit.distributed import vocab_parallel_linear_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_autocast_casts_as_f_linear_without_a_process_group(dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(8, 16, dtype=dtype, generator=generator)
    classifier = torch.randn(20, 16, dtype=dtype, generator=generator)
    target = torch.randint(0, 20, (8,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, classifier)
        loss = vocab_parallel_linear_cross_entropy(hidden, classifier, target)
        single = rarekit.linear_cross_entropy(hidden, classifier, target)
    assert loss.dtype == logits.dtype == single.dtype
    torch.testing.assert_close(loss, single, rtol=0, atol=0)
    expected = F.cross_entropy(logits.double(), target)
    torch.testing.assert_close(loss.double(), expected, **({} if dtype == torch.float64 else dict(atol=0.05, rtol=0.05)))
