"""Every Python example of README.md runs as written, on its own.

Each ```python block runs in a fresh namespace in a fresh folder, as a reader pasting only that block
into a new Python session would: a block must import and define every name it uses. The only prelude,
for a block that names it: a tiny random-weight BERT saved at ``path/to/bert-or-roberta``, the local
folder the augmentation example loads, since no model hub is reachable here.
"""
import ast
import re
from pathlib import Path

import pytest

from masked_lm_models import build_wordpiece_model, one_torch_thread  # noqa: F401

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
MODEL_FOLDER = "path/to/bert-or-roberta"


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4 and all(block.strip() for block in blocks)
    assert sum(MODEL_FOLDER in block for block in blocks) == 1  # the augmentation example loads the prelude


def module_level_names(node: ast.AST) -> set[str]:
    """The names a block binds in its own namespace (not those bound inside comprehensions or functions)."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return {node.id}
    if isinstance(node, ast.alias):
        return {(node.asname or node.name).split(".")[0]}
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda)):
        return set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    return set().union(*(module_level_names(child) for child in ast.iter_child_nodes(node)))


def run_block(index: int, block: str) -> dict:
    namespace: dict = {"__name__": "readme"}
    try:
        exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
    except Exception as error:
        first_line = block.strip().splitlines()[0]
        pytest.fail(f"README python block {index + 1} ({first_line!r}) raised {type(error).__name__}: {error}")
    return namespace


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("index", range(len(python_blocks())), ids=lambda index: f"block{index + 1}")
def test_each_readme_python_example_runs_on_its_own(index, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("nlpaug")
    pytest.importorskip("matplotlib")
    block = python_blocks()[index]
    monkeypatch.chdir(tmp_path)
    if MODEL_FOLDER in block:
        (tmp_path / MODEL_FOLDER).parent.mkdir(parents=True)
        build_wordpiece_model(tmp_path / MODEL_FOLDER, "bert")
    namespace = run_block(index, block)
    assigned = module_level_names(ast.parse(block))
    assert assigned and assigned <= namespace.keys()  # it ran to its end
