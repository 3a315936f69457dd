"""The curvature instrument over training, with any optimizer.

:class:`CurvatureMonitor` runs :func:`alice.diagnostics.curvature` on a schedule
from inside a training loop (call it after ``optimizer.step()``), keeps every
reading in :attr:`CurvatureMonitor.records` and sends it to TensorBoard, a
callable such as ``wandb.log``, or a JSON-lines file. Cost presets name what a
reading measures (:data:`COSTS`); :meth:`CurvatureMonitor.plot` draws the records.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .curvature import CurvatureReport, check_settings, curvature

__all__ = ["COSTS", "CurvatureMonitor"]

COSTS: dict[str, dict[str, Any]] = {
    "economy": {"draws": 4, "layers": None, "fit": False},
    "business": {"draws": 4, "layers": "module", "fit": True},
    "full": {"draws": 8, "layers": "module", "fit": True},
}
"""What one reading measures under each ``cost``: the sign ``draws`` (a reading costs
``2 * draws + 1`` gradient evaluations over the batches), per-module rows or the
overall row only (``layers``; per-module rows cost no extra evaluation), and whether
the three models are fitted to the loss measured along the direction (``fit``: 3 more
loss evaluations)."""

_DIRECTIONS = ("sign", "update")
_PRESET = object()  # layers: as the cost preset says (None is a value: the overall row only)


def _is_writer(sink: Any) -> bool:
    return callable(getattr(sink, "add_scalar", None))


def _check_sink(sink: Any) -> Any:
    if isinstance(sink, (str, os.PathLike)):
        path = Path(sink)
        if path.is_dir():
            raise ValueError(f"Invalid log: {str(sink)!r} is a directory (give a JSON-lines file path)")
        return path
    if _is_writer(sink) or callable(sink):
        return sink
    raise ValueError(f"Invalid log: {type(sink).__name__} (must be a SummaryWriter, a callable "
                     "log(values, step), a JSON-lines file path, or a list of those)")


def flatten(record: Mapping[str, Any], prefix: str = "curvature") -> dict[str, float]:
    """The numbers of one record as a flat dict of floats for a logger: ``"<prefix>/<key>"``
    for the overall keys, ``"<prefix>/fit/<model>/<key>"``, ``"<prefix>/<layer>/<key>"``;
    the verdicts (strings) and element counts are left out."""
    out: dict[str, float] = {}
    skip = {"step", "verdict", "numel", "draws", "lengths", "measured", "fit", "layers", "direction"}
    for key, value in record.items():
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    for model, row in record.get("fit", {}).items():
        for key, value in row.items():
            out[f"{prefix}/fit/{model}/{key}"] = float(value)
    for layer, row in record.get("layers", {}).items():
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)):
                out[f"{prefix}/{layer}/{key}"] = float(value)
    return out


class CurvatureMonitor:
    """Read the curvature instrument on a schedule while any optimizer trains a model.

    Call :meth:`step` (or the monitor itself) once per training step, after
    ``optimizer.step()``::

        monitor = CurvatureMonitor(model, loss_fn, every=100, cost="economy", sigma=1e-3,
                                   log=SummaryWriter("runs/x"))
        for batch in loader:
            ...
            optimizer.step()
            monitor.step(batch)      # measures on steps 100, 200, ...; else returns None

    Args:
        model: the model being trained.
        loss_fn: ``loss_fn(model, batch)`` returning the scalar loss (as for :func:`curvature`).
        every: measure on steps ``every, 2 every, ...`` (an int >= 1), or a callable
            ``every(step) -> bool``.
        cost: ``"economy"``, ``"business"`` or ``"full"``: see :data:`COSTS`. ``draws``,
            ``layers`` and ``fit`` given here override the preset.
        sigma: the perturbation length of the instrument (> 0). Or leave it ``None`` and
            pass ``optimizer``: sigma is then its first group's current ``lr`` at each
            reading (the per-element step length for Adam-like optimizers; a reading is
            skipped while that lr is 0).
        optimizer: see ``sigma``.
        batches: a list of fixed batches to measure on (read once and kept), so that readings at
            different steps see the same data; else each reading uses the batch passed to
            :meth:`step` (the training batch: its sampling noise enters the readings).
        log: where each reading goes: a ``SummaryWriter`` (``add_scalar`` per number), a
            callable ``log(values, step)`` (``wandb.log`` is one) called with a flat dict of
            floats, a path (one JSON object per line, appended; folders are created), or a list
            of those.
        direction: ``"sign"`` (default): the step ``-sigma sign(g0)``; ``"update"``: the
            optimizer's last update (the monitor copies the parameters one step before
            each reading; a reading with no copy falls back to ``"sign"`` and says so in
            its record's ``direction``).
        seed: seed of the sign draws (a CPU generator, advanced reading after reading).
        prefix: the loggers' key prefix.

    Every reading is also kept in :attr:`records` (``{"step", "seconds", "direction",
    **report.to_dict()}``), which :meth:`plot` draws.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, *, every: int | Callable[[int], bool] = 100,
                 cost: str = "economy", sigma: float | None = None, optimizer: torch.optim.Optimizer | None = None,
                 batches: Iterable | None = None, log: Any = None, direction: str = "sign",
                 draws: int | None = None, layers: Any = _PRESET, fit: bool | None = None,
                 seed: int = 0, prefix: str = "curvature"):
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
        if not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable as loss_fn(model, batch))")
        if not callable(every) and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"Invalid every: {every!r} (must be an integer >= 1 or a callable step -> bool)")
        if cost not in COSTS:
            raise ValueError(f"Invalid cost: {cost!r} (must be one of {', '.join(COSTS)})")
        if sigma is None and optimizer is None:
            raise ValueError("Invalid sigma: None (give sigma, or the optimizer whose lr is the sigma)")
        if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                                  or not math.isfinite(sigma) or sigma <= 0):
            raise ValueError(f"Invalid sigma: {sigma!r} (must be a positive finite number)")
        if optimizer is not None and not getattr(optimizer, "param_groups", None):
            raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} (must be a torch optimizer)")
        if direction not in _DIRECTIONS:
            raise ValueError(f"Invalid direction: {direction!r} (must be one of {_DIRECTIONS})")
        sinks = log if isinstance(log, (list, tuple)) else ([] if log is None else [log])
        self.model, self.loss_fn, self.every, self.cost = model, loss_fn, every, cost
        self.sigma, self.optimizer, self.direction, self.prefix = sigma, optimizer, direction, prefix
        self.settings = dict(COSTS[cost])
        for key, value in (("draws", draws), ("fit", fit)):
            if value is not None:
                self.settings[key] = value
        if layers is not _PRESET:
            self.settings["layers"] = layers
        check_settings(**self.settings)
        self.sinks = [_check_sink(s) for s in sinks]
        self.batches = None if batches is None else list(batches)
        if self.batches is not None and not self.batches:
            raise ValueError("Invalid batches: empty (give at least one batch, or None to use step's batch)")
        self.generator = torch.Generator().manual_seed(int(seed))
        self.steps = 0
        self.records: list[dict[str, Any]] = []
        self._before: list[Tensor] | None = None

    def should_measure(self, step: int) -> bool:
        """Whether the schedule measures at ``step``."""
        return bool(self.every(step)) if callable(self.every) else step % self.every == 0

    def step(self, batch: Any = None, *, step: int | None = None) -> CurvatureReport | None:
        """Count one training step (or set the count to ``step``, e.g. a trainer's global
        step) and measure if the schedule says so; returns the report, else ``None``."""
        self.steps = self.steps + 1 if step is None else int(step)
        report = self.measure(batch) if self.should_measure(self.steps) else None
        if self.direction == "update" and self.should_measure(self.steps + 1):
            self._before = [p.detach().clone() for p in self._params()]
        return report

    __call__ = step

    def measure(self, batch: Any = None) -> CurvatureReport | None:
        """Measure now (whatever the schedule), record and log at the current step.
        ``None`` when sigma follows an optimizer whose lr is 0."""
        sigma = float(self.optimizer.param_groups[0]["lr"]) if self.sigma is None else float(self.sigma)
        if sigma == 0:
            return None
        if self.batches is None and batch is None:
            raise ValueError("Invalid batch: None (pass the batch to step(), or give batches= to the monitor)")
        batches = self.batches if self.batches is not None else [batch]  # one batch, even if it is a list
        direction, used = None, "sign"
        if self.direction == "update" and self._before is not None:
            direction, used = [p.detach() - b for p, b in zip(self._params(), self._before)], "update"
        self._before = None
        start = time.perf_counter()
        report = curvature(self.model, self.loss_fn, batches, sigma=sigma, direction=direction,
                           generator=self.generator, **self.settings)
        record = {"step": self.steps, "seconds": time.perf_counter() - start, "direction": used, **report.to_dict()}
        self.records.append(record)
        self._log(record)
        return report

    def _params(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _log(self, record: dict[str, Any]) -> None:
        values = None
        for sink in self.sinks:
            if isinstance(sink, Path):
                sink.parent.mkdir(parents=True, exist_ok=True)
                with sink.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                continue
            values = values if values is not None else flatten(record, self.prefix)
            if _is_writer(sink):
                for key, value in values.items():
                    sink.add_scalar(key, value, record["step"])
            else:
                sink(values, record["step"])

    def plot(self, path=None, *, title: str | None = None):
        """:func:`alice.diagnostics.plot_curvature` of :attr:`records` (matplotlib)."""
        from .plots import plot_curvature

        return plot_curvature(self.records, path=path, title=title)
