"""The README's tensor-parallel example runs as written under `torchrun --nproc_per_node 2` on gloo, and its
vocabulary-parallel and fused losses equal the single-process loss."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ranks import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "# tensor_parallel.py: run with `torchrun --nproc_per_node 2 tensor_parallel.py`"


def example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)
    (block,) = [block for block in blocks if block.startswith(MARKER)]
    return block


def test_readme_tensor_parallel_example_runs_under_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    (tmp_path / "tensor_parallel.py").write_text(example())
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", f"--master_port={free_port()}",
                             "tensor_parallel.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    losses = dict(re.findall(r"(vocab-parallel|fused|single-process|DTensor LM) (\d+\.\d+)", result.stdout))
    assert set(losses) >= {"vocab-parallel", "fused", "single-process", "DTensor LM"}, result.stdout
    single = float(losses["single-process"])
    for name in ("vocab-parallel", "fused"):
        assert float(losses[name]) == pytest.approx(single, rel=1e-5), losses
