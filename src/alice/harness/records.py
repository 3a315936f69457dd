"""The results file: append-only JSONL, one row per evaluation point of a run.

Rows are the study's only source of truth: the report is recomputed from them. Each
row is written with one ``write`` then flushed and fsynced, so a crash loses at
most the line being written. A run's rows share an ``attempt`` id and its last row
has ``done: true``; a run counts only through a finished attempt, so a run cut off
half way is simply run again on resume (its partial rows stay in the file, ignored),
and finished runs are never repeated. A run's first row (step 0) also carries its
context: command, versions, device, data, reference.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import torch

RESULTS = "results.jsonl"
PACKAGES = ("alice-optimizer", "torch", "numpy", "scikit-learn", "matplotlib", "pytorch_optimizer")


class Writer:
    """Appends rows to a JSONL file durably."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # A line left half-written by a crash gets its newline, so the next row starts clean.
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:
                self._append("\n")

    def _append(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write(self, row: dict) -> None:
        self._append(json.dumps(row, separators=(",", ":")) + "\n")


ROW_KEYS = ("run", "attempt", "step")  # what every row has, whatever else it carries


def read_rows(path: Path) -> list[dict]:
    """All rows of the file; lines that do not parse (torn by a crash) are skipped with a warning.
    A line that parses but is not a row (``42``, ``null``, an object without ``run``) is a
    ``ValueError`` naming the file and line: such a file was not written by ``alice compare``."""
    if not path.exists():
        return []
    rows, torn = [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn += 1
            continue
        if not isinstance(row, dict) or any(key not in row for key in ROW_KEYS):
            missing = "" if not isinstance(row, dict) else \
                f" (no {', '.join(k for k in ROW_KEYS if k not in row)})"
            raise ValueError(f"{path}, line {number}: not a row of alice compare{missing}: "
                             f"{line.strip()[:60]}")
        if not isinstance(row["step"], int) or isinstance(row["step"], bool):
            raise ValueError(f"{path}, line {number}: not a row of alice compare (step is not an integer)")
        rows.append(row)
    if torn:
        warnings.warn(f"{path}: skipped {torn} incomplete line(s) left by an interrupted run", stacklevel=2)
    return rows


def finished_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """Run key -> the rows of its first finished attempt, in step order."""
    attempts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        attempts[row["run"], row["attempt"]].append(row)
    runs: dict[str, list[dict]] = {}
    for (key, _), group in attempts.items():
        if key not in runs and any(r.get("done") for r in group):
            runs[key] = sorted(group, key=lambda r: r["step"])
    return runs


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the results."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device, threads: int) -> str:
    """The hardware a run used, in words: the GPU's name, or the CPU's with its threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {_cpu_name()}, {os.cpu_count()} cores, torch threads {threads}"
