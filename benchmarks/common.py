"""Shared pieces of the benchmark scripts: optimizer specs, timing, the JSON log.

``--optimizer module:Class[,key=value,...]`` names any torch optimizer; values
are parsed as Python literals (``lr=1e-3,fused=True,betas=(0.9,0.95)``) or torch
dtypes (``averages_dtype=torch.bfloat16``), and
the short names ``alice``, ``adam``, ``adamw`` stand for ``alice:Alice``,
``torch.optim:Adam`` and ``torch.optim:AdamW``.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch

SHORT = {"alice": "alice:Alice", "adam": "torch.optim:Adam", "adamw": "torch.optim:AdamW", "sgd": "torch.optim:SGD"}


@dataclass
class OptimizerSpec:
    text: str
    cls: type
    kwargs: dict = field(default_factory=dict)

    @property
    def needs_closure(self) -> bool:
        return self.cls.__module__.split(".")[0].startswith("alice")  # alice, or a copy for A/B runs

    def make(self, params, **defaults):
        return self.cls(params, **{**defaults, **self.kwargs})


def parse_optimizer(text: str) -> OptimizerSpec:
    """``module:Class[,key=value,...]`` (or a short name) -> an :class:`OptimizerSpec`."""
    head, *pairs = text.split(",")
    target = SHORT.get(head, head)
    if ":" not in target:
        raise SystemExit(f"--optimizer {text!r}: expected module:Class[,key=value] or one of {sorted(SHORT)}")
    module, name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"--optimizer {text!r}: cannot load {target} ({err})") from None
    kwargs = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        value = value.strip()
        if value.startswith("torch.") and isinstance(getattr(torch, value[6:], None), torch.dtype):
            kwargs[key.strip()] = getattr(torch, value[6:])  # averages_dtype=torch.bfloat16
            continue
        try:
            kwargs[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value
    return OptimizerSpec(text, cls, kwargs)


def versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        import alice

        info["alice"] = alice.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info.update(device="cpu", threads=torch.get_num_threads())
    return info


def write_log(path: str | None, results) -> None:
    """Append one JSON line: the command, versions and results."""
    if not path:
        return
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), **versions(),
              "results": results}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class SyncCounter:
    """Counts host-device synchronisations (CUDA's sync debug mode, in 'warn')."""

    def __enter__(self):
        import warnings

        self.count = 0
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        self.count = sum("synchroniz" in str(w.message) for w in self._records)
        return False


def timed(fn, steps: int, device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls (CUDA events on a GPU)."""
    synchronize(device)
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    begin = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - begin) / steps
