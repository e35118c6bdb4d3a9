"""Every Python example of README.md runs as written.

The ```python blocks run in the README's order in one namespace, in a fresh folder, as a reader
pasting them into one Python session would (a later block may use a name an earlier one defined).
The only prelude: a tiny random-weight BERT saved at ``path/to/bert-or-roberta``, the folder the
augmentation example names, since no model hub is reachable here. Everything else an example
uses, it defines.
"""
import re
from pathlib import Path

import pytest
import torch

from masked_lm_models import build_wordpiece_model, one_torch_thread  # noqa: F401

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 4 and all(block.strip() for block in blocks)


@pytest.mark.usefixtures("one_torch_thread")
def test_every_readme_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("nlpaug")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "path" / "to").mkdir(parents=True)
    build_wordpiece_model(tmp_path / "path" / "to" / "bert-or-roberta", "bert")  # the prelude
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as error:
            first_line = block.strip().splitlines()[0]
            pytest.fail(f"README python block {index + 1} ({first_line!r}) raised {type(error).__name__}: {error}")
    assert isinstance(namespace.get("counts"), torch.Tensor)  # the first example ran to its end
