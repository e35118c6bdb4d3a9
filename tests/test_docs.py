"""The documentation: help(rarekit) opens with an overview of the whole API, and the API reference site
(mkdocs.yml, built strict by `make docs` in CI) documents modules that exist and flags a broken cross-reference."""
import importlib
import importlib.util
import logging
import pydoc
import re
from pathlib import Path

import pytest

import rarekit
from public_api import PUBLIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"^::: (\S+)\n(?:    options:\n      members: (\[[^\]]*\]|false))?", re.M)


def docs_module(name: str):
    """A Python file of docs/ (the site's build extensions), imported under its own name."""
    spec = importlib.util.spec_from_file_location(f"rarekit_docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_text() -> list[str]:
    return pydoc.render_doc(rarekit, renderer=pydoc.plaintext).splitlines()


def test_help_opens_with_an_overview_that_names_every_public_name():
    lines = help_text()
    overview = lines[:lines.index("PACKAGE CONTENTS")]
    assert len(overview) <= 60
    words = set(re.findall(r"\w+", "\n".join(overview)))
    assert set(PUBLIC_NAMES) <= words, set(PUBLIC_NAMES) - words
    assert "help(rarekit.cross_entropy)" in "\n".join(overview)
    assert len(lines) <= 150, "help(rarekit) documents classes in full again (an __all__ listing them?)"


def documented_names() -> dict[str, list[str] | None]:
    """``{module: the members its ::: directive lists (None: all of them)}`` over the pages of mkdocs.yml's nav."""
    def members(listed: str) -> list[str] | None:
        return None if not listed else [] if listed == "false" else listed.strip("[]").split(", ")

    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = re.findall(r":\s+(\S+\.md)\s*$", mkdocs, re.M)
    assert {"losses.md", "sampling.md", "counting.md", "augmentation.md", "integrations.md", "usage.md",
            "benchmarks.md"} <= set(pages)
    return {module: members(listed) for page in pages
            for module, listed in DIRECTIVE.findall((ROOT / "docs" / page).read_text(encoding="utf-8"))}


def test_the_reference_documents_every_public_name_and_only_names_that_exist():
    documented = documented_names()
    names = set()
    for module_name, members in documented.items():
        module = importlib.import_module(module_name)
        listed = members if members is not None else getattr(module, "__all__", [])
        assert all(hasattr(module, name) for name in listed), (module_name, listed)
        names |= set(listed)
    public = set(PUBLIC_NAMES)
    for package in ("rarekit.losses", "rarekit.sampling", "rarekit.augment", "rarekit.distributed"):
        public |= set(importlib.import_module(package).__all__)
    assert public <= names, public - names


def test_a_role_naming_nothing_is_a_warning_and_a_known_one_a_link(tmp_path, caplog):
    griffe = pytest.importorskip("griffe")  # the docs extra
    package = tmp_path / "rarekit"
    package.mkdir()
    (package / "__init__.py").write_text('"""See :func:`count` and :func:`~rarekit.nothing_here`."""\n'
                                         'def count():\n    """Counts."""\n')
    SphinxRoles = docs_module("griffe_sphinx_roles").SphinxRoles
    with caplog.at_level(logging.WARNING):
        module = griffe.load(package, extensions=griffe.load_extensions(SphinxRoles))
    assert '<autoref identifier="rarekit.count" optional><code>count</code></autoref>' in module.docstring.value
    assert "`nothing_here`" in module.docstring.value
    assert ":func:`rarekit.nothing_here`" in caplog.text and "names nothing in rarekit" in caplog.text


def test_a_readme_link_to_a_file_the_site_renders_points_to_its_page():
    hooks = docs_module("hooks")
    markdown = "see [the figures](../benchmarks/RESULTS.md#augment-on-cpu) and [setup.py](../setup.py)"
    assert hooks.on_page_markdown(markdown) == ("see [the figures](benchmarks.md#augment-on-cpu) and "
                                                "[setup.py](../setup.py)")
