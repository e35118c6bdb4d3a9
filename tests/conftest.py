import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`cuda` tests run only where a GPU is visible (make gpu-check)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every kernel test runs on CPU here and again on CUDA under `pytest -m cuda`."""
    return torch.device(request.param)


@pytest.fixture
def gen():
    """A fresh seed per test run: inputs are random, not frozen."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
