"""Packaging conventions: the PEP 561 marker ships, the LICENSE is the license pyproject.toml declares, and each
Makefile target installs only the extra it needs (`make demo` never the test extra)."""
import hashlib
import importlib.resources
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")
# The Apache Software Foundation's https://www.apache.org/licenses/LICENSE-2.0.txt, as Debian and SPDX ship it.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_py_typed_marker_is_in_the_package_and_its_package_data():
    assert (importlib.resources.files("rarekit") / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["rarekit"]


def test_the_license_file_is_the_full_text_of_the_declared_license():
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text, usedforsecurity=False).hexdigest() == APACHE_2_0_MD5


def make_commands(target: str) -> str:
    """The commands `make TARGET` runs from scratch (-B: as if nothing were installed), printed, not run."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-n", "-B", target, f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout


def test_make_demo_installs_the_demo_extra_and_not_the_test_extra():
    commands = make_commands("demo")
    assert '"rarekit[demo]"' in commands and "-m rarekit demo" in commands
    assert "[test]" not in commands and "pytest" not in commands


def test_make_test_installs_the_test_extra():
    commands = make_commands("test")
    assert '"rarekit[test]"' in commands and "-m pytest" in commands and "[demo]" not in commands
    assert "-m mypy" in commands  # the type check runs with the tests

