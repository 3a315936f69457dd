"""Adapters that run Alice inside the usual training loops.

Each submodule imports its framework only when it is imported itself, so
``import alice`` never pulls in transformers, accelerate or Lightning:

- :mod:`alice.integrations.hf`: ``AliceTrainer``, an HF ``Trainer`` whose optimizer
  step is an exact Alice step (micro-batches replayed inside the closure).
- :mod:`alice.integrations.accelerate`: ``alice_step`` and ``micro_batch_closure``,
  the closure loop through an ``Accelerator`` that returns the loss.
- :mod:`alice.integrations.lightning`: ``AliceCallback`` (checks the Trainer's
  configuration, optionally clips consistently) and ``at_center`` for logging.

Both ``lightning`` and ``hf`` also have ``CurvatureCallback``: the curvature instrument
(:class:`alice.diagnostics.CurvatureMonitor`) during training, with any optimizer.

Framework-free helpers live here: :func:`find_alice` (the Alice behind wrappers),
:func:`at_center` (whether the running evaluation is the one at ``nu``) and
:class:`ConsistentClip` (one clipping factor for the evaluations of one step).
See ``docs/integrations.md`` for each framework's recipe and what it costs.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._common import ConsistentClip, at_center, find_alice

__all__ = ["ConsistentClip", "at_center", "find_alice", "accelerate", "hf", "lightning"]

_SUBMODULES = ("accelerate", "hf", "lightning")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
