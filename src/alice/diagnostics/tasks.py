"""Small real-data tasks for ``alice probe``, offline and seconds long on a CPU.

They follow the interface of the comparison harness's tasks
(``alice.harness.tasks.TASKS``: ``load() -> Splits`` with ``train``/``val`` splits
that ``take(index)`` examples, ``model(act)``, ``batch_size``, ``steps``,
``lrs["alice"]``, ``has_act``), and :func:`get_tasks` returns the harness's own
tasks when that package is installed, so ``alice probe`` then runs on them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "Split", "Splits", "Task", "get_tasks", "mlp"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}
SPLIT_SEED = 0


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"This task needs {module!r}: pip install 'alice-optimizer[demo]'") from error


@dataclass
class Split:
    """Examples as rows of ``x`` with labels ``y``."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def eval_index(self) -> Tensor:
        return torch.arange(len(self))


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    note: str


def _split(x: np.ndarray, y: np.ndarray, note: str, standardize: bool = False) -> Splits:
    """80/10/10 within each class, from a fixed permutation."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(y):
        members = perm[y[perm] == label]
        n_held = max(1, round(0.1 * len(members)))
        for part, chunk in zip(parts, np.split(members, [len(members) - 2 * n_held, len(members) - n_held])):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    x = x.astype(np.float32)
    if standardize:
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    make = lambda i: Split(torch.from_numpy(x[i]), torch.from_numpy(y[i].astype(np.int64)))  # noqa: E731
    return Splits(make(train), make(val), make(test), f"{note}; {len(train)}/{len(val)}/{len(test)} stratified")


def load_digits(path=None) -> Splits:
    x, y = _require("sklearn.datasets").load_digits(return_X_y=True)
    return _split(x / 16.0, y, "scikit-learn digits, 8x8 pixels in [0, 1]")


def load_breast_cancer(path=None) -> Splits:
    x, y = _require("sklearn.datasets").load_breast_cancer(return_X_y=True)
    return _split(x, y, "scikit-learn breast cancer, 30 standardised features", standardize=True)


def mlp(sizes: list[int], act: str) -> nn.Module:
    """Linear layers of ``sizes`` with ``act`` between them (a single layer: logistic regression)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[act]())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    load: Callable[..., Splits]
    model: Callable[[str], nn.Module]
    batch_size: int
    steps: int
    lrs: dict[str, float] = field(default_factory=dict)
    has_act: bool = True


BUILTIN: dict[str, Task] = {t.name: t for t in [
    Task("digits-mlp", "MLP 64-64-10 on scikit-learn's 8x8 digits", load_digits,
         lambda act: mlp([64, 64, 10], act), 64, 300, {"alice": 3e-2}),
    Task("logreg", "logistic regression on scikit-learn's breast cancer (smooth: no kinks)", load_breast_cancer,
         lambda act: mlp([30, 2], act), 32, 300, {"alice": 3e-2}, has_act=False),
]}
"""The built-in tasks (the same names and settings as the comparison harness's)."""


def get_tasks() -> dict:
    """The comparison harness's tasks where ``alice.harness`` is installed, else :data:`BUILTIN`."""
    try:
        from alice.harness.tasks import TASKS  # type: ignore[import-not-found]
    except ImportError:
        return dict(BUILTIN)
    return dict(TASKS)
