"""Every code block of the README and of ``docs/*.md`` runs as written, or says why not.

A fenced block must name its language. ``python`` blocks are executed, each on its own (complete
imports, tiny data, a bounded run) in a fresh namespace inside a temporary directory, on one torch
thread, with every warning an error unless the block imports a framework or builds a process
group (whose own notices are not ours). Relative links and their anchors must resolve. Two
comments on the line before a block change that:

- ``<!-- not-run: reason -->``: the block is shown, not executed (a skip that names the reason);
- ``<!-- continues -->``: the block continues the previous python block of the same file and runs
  in its namespace, after it.

Other languages (``sh``, ``text``, ...) are not Python and are not run. A block that imports a
package outside the standard library, torch and alice skips when the package is missing; a block
that asks for CUDA skips without a GPU; a block that builds a process group runs as rank 0 of 1.
"""

from __future__ import annotations

import ast
import re
import signal
import socket
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/study/ holds reports
FENCE = re.compile(r"^( *)```([^\n`]*)\n(.*?)^\1```[ \t]*$", re.S | re.M)  # (indented in lists too)
MARK = re.compile(r"<!--\s*(not-run|continues)\s*:?\s*(.*?)\s*-->\s*\Z", re.S)
FRAMEWORKS = {"lightning", "transformers", "accelerate", "timm", "tensorboard"}
SECONDS = 60  # a block that runs longer is unbounded (Lightning's default is 1000 epochs)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny data (conftest)


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    mark: str | None  # "not-run", "continues" or None
    reason: str
    previous: Block | None  # the block a "continues" block runs after

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for path in FILES:
        text, previous = path.read_text(encoding="utf-8"), None
        for match in FENCE.finditer(text):
            before = text[:match.start()].rstrip("\n")
            mark = MARK.search(before[before.rfind("\n") + 1:] if "\n" in before else before)
            block = Block(path, text[:match.start()].count("\n") + 1, match.group(2).strip(),
                          textwrap.dedent(match.group(3)),
                          mark and mark.group(1), mark.group(2) if mark else "", previous)
            found.append(block)
            if block.lang == "python":
                previous = block
    return found


BLOCKS = _blocks()
PYTHON = [pytest.param(b, id=b.id) for b in BLOCKS if b.lang == "python"]


def test_every_block_names_its_language():
    untagged = [b.id for b in BLOCKS if not b.lang]
    assert not untagged, f"fenced blocks without a language (python, sh, text...): {untagged}"


def test_continues_follows_a_python_block():
    orphans = [b.id for b in BLOCKS if b.mark == "continues" and (b.lang != "python" or b.previous is None)]
    assert not orphans, f"<!-- continues --> needs a python block before it in the same file: {orphans}"


def _imports(code: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _chain(block: Block) -> list[Block]:
    chain = [block]
    while chain[-1].mark == "continues":
        chain.append(chain[-1].previous)
    return chain[::-1]


RAN: dict[str, dict] = {}  # namespace after each block that ran: a "continues" block resumes from it


def _alarm(signum, frame):
    raise TimeoutError(f"a documentation block ran for more than {SECONDS} s: bound its run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("block", PYTHON)
def test_python_block_runs(block: Block, tmp_path, monkeypatch):
    if block.mark == "not-run":
        assert block.reason, f"{block.id}: <!-- not-run: ... --> must give a reason"
        pytest.skip(f"not run: {block.reason}")
    chain = _chain(block)
    code = "\n".join(b.code for b in chain)
    if re.search(r"\bcuda\b", code) and "is_available()" not in code and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    imported = _imports(code)
    for module in sorted(imported - set(sys.stdlib_module_names) - {"torch", "alice"}):
        pytest.importorskip(module, reason=f"{module} is optional")
    if "accelerate" in imported:  # a fresh Accelerator, as in a new process
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    if "init_process_group" in code:  # a torchrun script: rank 0 of a group of one
        for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())).items():
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # blocks that write (checkpoints, logs, output_dir) write here
    if block.mark == "continues" and block.previous.id in RAN and "init_process_group" not in code:
        # the blocks before it ran in this session: go on from there (a process group is gone: rerun)
        chain, namespace = [block], RAN[block.previous.id]
    else:
        namespace = {"__name__": "__main__"}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        with warnings.catch_warnings():
            if not imported & FRAMEWORKS and "init_process_group" not in code:  # (NCCL warns as it likes)
                warnings.simplefilter("error")
            for part in chain:
                exec(compile(part.code, f"{part.id}", "exec"), namespace)
                RAN[part.id] = namespace
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for value in namespace.values():  # writers left open would flush after the directory is gone
            if type(value).__name__ == "SummaryWriter":
                value.close()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_the_readme_has_runnable_blocks():
    runnable = [b for b in BLOCKS if b.path.name == "README.md" and b.lang == "python" and b.mark != "not-run"]
    assert len(runnable) >= 3  # Usage, GradScaler, Accelerate


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+ (.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_and_anchors_resolve():
    broken = []
    for path in FILES:
        for target in LINK.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken
