"""The public surface after the layout by role (issue 19): every public name of ``rarekit`` and every
documented module path imports, and ``import rarekit`` loads neither the study application nor the heavy
optional libraries."""
import importlib
import subprocess
import sys

import pytest

import rarekit
from public_api import LAZY, PUBLIC_NAMES

DOCUMENTED_MODULES = ["rarekit.losses", "rarekit.losses.cross_entropy", "rarekit.losses.linear", "rarekit.losses.sigmoid", "rarekit.sampling",
                      "rarekit.sampling.indices", "rarekit.sampling.strategy", "rarekit.sampling.balanced",
                      "rarekit.augment", "rarekit.augment.augmenter", "rarekit.augment.minority",
                      "rarekit.augment.protection", "rarekit.augment.masked_lm", "rarekit.augment.nlpaug_compat",
                      "rarekit.counting", "rarekit.weights", "rarekit.plots", "rarekit.ops", "rarekit.reference", "rarekit.reference_sigmoid",
                      "rarekit.cli", "rarekit.integrations.transformers", "rarekit.study", "rarekit.study.demo",
                      "rarekit.study.lm", "rarekit.study.report", "rarekit.study.text", "rarekit.study.datasets",
                      "rarekit.study.plots", "rarekit.distributed", "rarekit.losses.sigmoid"]
HEAVY = ("matplotlib", "pandas", "sklearn", "imblearn", "transformers", "nlpaug", "scipy")


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_resolves(name):
    value = getattr(rarekit, name)
    assert callable(value), f"rarekit.{name} is {value!r}"


def test_star_import_brings_every_public_name_but_the_lazy_drop_ins():
    namespace: dict = {}
    exec("from rarekit import *", namespace)
    assert set(PUBLIC_NAMES) - set(LAZY) <= set(namespace), set(PUBLIC_NAMES) - set(LAZY) - set(namespace)
    assert not set(LAZY) & set(namespace)  # importing them would need the rarekit[sampling] extra


@pytest.mark.parametrize("module", DOCUMENTED_MODULES)
def test_documented_module_paths_import(module):
    imported = importlib.import_module(module)
    assert imported.__name__ == module


def test_sampling_package_exposes_the_drop_ins():
    pytest.importorskip("imblearn")
    from rarekit.sampling import RandomOverSampler, samplers

    assert RandomOverSampler is samplers.RandomOverSampler is rarekit.RandomOverSampler


def test_import_rarekit_loads_no_study_module_and_no_heavy_library():
    code = ("import sys, rarekit\n"
            "loaded = [m for m in sys.modules if m.startswith('rarekit.study') or m.split('.')[0] in %r]\n"
            "print(','.join(sorted(loaded)))" % (HEAVY,))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import rarekit loaded: {result.stdout.strip()}"


def test_library_never_imports_the_study():
    """Only the command line (which runs the study) and the study itself import rarekit.study."""
    import pathlib
    import re

    root = pathlib.Path(rarekit.__file__).parent
    study_import = re.compile(r"^\s*(from rarekit\.study|import rarekit\.study|from rarekit import study)", re.M)
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if "study" not in path.relative_to(root).parts and path.name != "cli.py"
                 and study_import.search(path.read_text())]
    assert offenders == [], f"library modules that import the study: {offenders}"


def test_readme_layout_names_every_module():
    """The README's Layout table names every Python file of the package (by file name, in its folder's row)."""
    import pathlib

    root = pathlib.Path(rarekit.__file__).parent
    readme = (root.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):readme.index("## Tests, CI")]
    missing = [str(path.relative_to(root)) for path in root.rglob("*.py")
               if path.name != "__init__.py" and f"`{path.name}`" not in layout and f"`rarekit/{path.name}`" not in layout]
    assert missing == [], f"modules missing from the README's Layout section: {missing}"
