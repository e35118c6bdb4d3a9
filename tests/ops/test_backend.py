"""rarekit._backend: the messages of the fallback path and of the CPU ISA switch (issue 10, item 16)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rarekit

PACKAGE = Path(rarekit.__file__).parent


def run_python(code: str, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "RAREKIT_FORCE_REFERENCE": "0", **env})


def test_fallback_warning_says_the_extension_is_not_built_and_how_to_build_it(tmp_path):
    """Without rarekit._C the warning names the cause, not Python's "partially initialized module ...
    circular import" text, and the references serve the ops."""
    shutil.copytree(PACKAGE, tmp_path / "rarekit", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "  # pip -e's finder
            "import torch, rarekit; print(rarekit.count(torch.tensor([1, 1, 3]), 4).tolist()); "
            "print(rarekit.backend_info()['extension_error'])")
    result = run_python(code, cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "the compiled extension rarekit._C is not built" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr and "make install" in result.stderr
    assert "circular import" not in result.stderr and "partially initialized" not in result.stderr
    assert result.stdout.splitlines() == ["[0, 2, 0, 1]", "the compiled extension rarekit._C is not built"]


@pytest.mark.skipif(rarekit._backend._C is None, reason="compiled extension not built")
def test_unknown_cpu_isa_warns_listing_the_valid_values():
    result = run_python("import rarekit; print(rarekit.backend_info()['cpu_isa'])", RAREKIT_CPU_ISA="bogus")
    assert result.returncode == 0, result.stderr
    assert "RAREKIT_CPU_ISA='bogus' is not a CPU kernel ISA" in result.stderr
    assert "valid values: baseline, avx2, avx512" in result.stderr
    assert result.stdout.strip() in rarekit._backend._C.supported_cpu_isas()
    capped = run_python("import rarekit; print(rarekit.backend_info()['cpu_isa'])", RAREKIT_CPU_ISA="baseline")
    assert capped.returncode == 0 and "RAREKIT_CPU_ISA" not in capped.stderr
    assert capped.stdout.strip() == "baseline"


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="'native' or 'reference', got 'gpu'"):
        rarekit.set_backend("gpu")
