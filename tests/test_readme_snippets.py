"""The README's ```python blocks run as written: each self-contained block (one with its own
imports) is executed; fragments that continue the text around them, and blocks that need a GPU,
are skipped with the reason; blocks of an optional framework skip when it is not installed."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# The optional package a block needs, by what it imports.
OPTIONAL = {"lightning": "lightning", "transformers": "transformers", "accelerate": "accelerate"}


def _blocks():
    text = README.read_text(encoding="utf-8")
    for match in BLOCK.finditer(text):
        line = text[:match.start()].count("\n") + 1
        yield pytest.param(match.group(1), id=f"README.md:{line}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_readme_block_runs(code, tmp_path, monkeypatch):
    if "cuda" in code and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (fp16 autocast and GradScaler)")
    if not re.search(r"^(import|from) ", code, re.M):
        pytest.skip("a fragment continuing the text around it (no imports of its own): not self-contained")
    for module, package in OPTIONAL.items():
        if re.search(rf"^(import|from) {module}\b", code, re.M):
            pytest.importorskip(module, reason=f"{package} is an optional extra")
    if re.search(r"^(import|from) accelerate\b", code, re.M):  # a fresh Accelerator, as in a new process
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    monkeypatch.chdir(tmp_path)  # blocks that write (the HF Trainer's output_dir) write here
    exec(compile(code, str(README), "exec"), {"__name__": "readme_snippet"})


def test_readme_has_runnable_blocks():
    runnable = [p for p in _blocks() if "cuda" not in p.values[0] and re.search(r"^import ", p.values[0], re.M)]
    assert len(runnable) >= 4
