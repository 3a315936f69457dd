"""A small, reproducible comparison of Alice and Adam on scikit-learn's digits.

``run_demo`` trains a 64-64-10 MLP on the bundled 8x8 digits (no download) with
each optimizer of ``OPTIMIZERS`` over a few seeds, on the CPU, and reports the
final training loss, the test accuracy, the number of gradient evaluations
(closure calls) and the wall time. Every optimizer runs through the same
closure-based loop; Alice calls the closure three times on a sampling step and
once on a quick step, so it spends more gradient evaluations per step than Adam.
"""

from __future__ import annotations

import importlib
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from .optimizer import Alice

__all__ = ["OPTIMIZERS", "run_demo"]

DEFAULT_OUT = Path("runs/demo/report.md")
DEFAULT_EPOCHS = 30
DEFAULT_SEEDS = 3
BATCH_SIZE = 128
TEST_SIZE = 500
SPLIT_SEED = 0

OPTIMIZERS: dict[str, Callable[[list[Tensor], int], torch.optim.Optimizer]] = {
    "Alice (lr=3e-2)": lambda params, seed: Alice(params, lr=3e-2, seed=seed),
    "Alice glass (lr=3e-2)": lambda params, seed: Alice.preset("glass", params, lr=3e-2, seed=seed),
    "Alice hessian (lr=3e-2)": lambda params, seed: Alice.preset("hessian", params, lr=3e-2, seed=seed),
    "Alice glass_rms (lr=3e-2)": lambda params, seed: Alice.preset("glass_rms", params, lr=3e-2, seed=seed),
    "Adam (lr=1e-2)": lambda params, seed: torch.optim.Adam(params, lr=1e-2),
}
"""Display name -> factory(params, seed) of every optimizer the demo compares.

The learning rates are the best of a sweep over 30 epochs and 3 seeds (Alice:
5e-3 .. 5e-2, where lr is also the perturbation length; Adam: 1e-3 .. 3e-2)."""


def _require(module: str):
    """Import an optional dependency of the demo, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"The demo needs {module!r}; install the demo extra: pip install 'alice-optimizer[demo]'"
        ) from error


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits as float32 features in [0, 1], split 1297/500 (stratified, fixed seed)."""
    datasets = _require("sklearn.datasets")
    model_selection = _require("sklearn.model_selection")
    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x / 16.0, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def make_model(seed: int) -> nn.Module:
    """The 64-64-10 ReLU MLP, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _train_epoch(model, opt, x, y, generator) -> int:
    """One pass over (x, y) in shuffled mini-batches; returns the closure calls it made."""
    loss_fn, calls = nn.CrossEntropyLoss(), 0
    for batch in torch.randperm(len(x), generator=generator).split(BATCH_SIZE):
        xb, yb = x[batch], y[batch]

        def closure():
            nonlocal calls
            calls += 1
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            return loss

        opt.step(closure)
    return calls


@torch.no_grad()
def _evaluate(model, data) -> tuple[float, float]:
    """(loss on the whole training set, accuracy on the test set)."""
    x_train, y_train, x_test, y_test = data
    loss = nn.functional.cross_entropy(model(x_train), y_train).item()
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return loss, accuracy


def _run(name: str, seed: int, data, epochs: int, bar) -> dict:
    """Train one model with optimizer ``name`` from ``seed``; returns its metrics."""
    model = make_model(seed)
    opt = OPTIMIZERS[name](list(model.parameters()), seed)
    generator = torch.Generator().manual_seed(seed)
    start, evals = time.perf_counter(), 0
    for _ in range(epochs):
        evals += _train_epoch(model, opt, data[0], data[1], generator)
        bar.update()
    seconds = time.perf_counter() - start
    train_loss, test_acc = _evaluate(model, data)
    return dict(seed=seed, train_loss=train_loss, test_acc=test_acc, grad_evals=evals, seconds=seconds)


def _std(values: list[float]) -> float:
    """Sample standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _summarize(name: str, runs: list[dict]) -> dict:
    """Mean and spread over seeds of one optimizer's runs."""
    losses, accs = [r["train_loss"] for r in runs], [r["test_acc"] for r in runs]
    return dict(
        optimizer=name,
        train_loss_mean=statistics.mean(losses), train_loss_std=_std(losses),
        test_acc_mean=statistics.mean(accs), test_acc_std=_std(accs),
        grad_evals=statistics.mean(r["grad_evals"] for r in runs),
        seconds=statistics.mean(r["seconds"] for r in runs),
        runs=runs,
    )


def format_report(results: list[dict], setting: str) -> str:
    """The results as a Markdown report: a title, the ``setting`` line and one table."""
    lines = [
        "# Alice vs Adam on digits",
        "",
        setting,
        "",
        "| optimizer | train loss | test accuracy | grad evals | time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['optimizer']} | {r['train_loss_mean']:.4f} +- {r['train_loss_std']:.4f} "
            f"| {r['test_acc_mean']:.4f} +- {r['test_acc_std']:.4f} "
            f"| {r['grad_evals']:.0f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: the demo's matrices are tiny, so more threads
    only add synchronisation (several times slower when the cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_positive(name: str, value) -> None:
    """Raise ValueError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")


def run_demo(
    epochs: int = DEFAULT_EPOCHS,
    seeds: int = DEFAULT_SEEDS,
    out: str | os.PathLike | None = DEFAULT_OUT,
    progress: bool = True,
) -> list[dict]:
    """Compare the ``OPTIMIZERS`` on digits over seeds ``0 .. seeds-1``.

    Prints the report, writes it as Markdown to ``out`` (unless ``None``) and
    returns one dict per optimizer: ``optimizer``, ``train_loss_mean/std``,
    ``test_acc_mean/std``, ``grad_evals`` and ``seconds`` (per run), and ``runs``
    (the per-seed metrics).
    """
    _check_positive("epochs", epochs)
    _check_positive("seeds", seeds)
    tqdm = _require("tqdm").tqdm
    data = load_digits()
    results = []
    bar = tqdm(total=len(OPTIMIZERS) * seeds * epochs, unit="epoch", disable=not progress)
    with bar, _single_thread():
        for name in OPTIMIZERS:
            bar.set_description(name)
            runs = [_run(name, seed, data, epochs, bar) for seed in range(seeds)]
            results.append(_summarize(name, runs))
    setting = (
        f"MLP 64-64-10, {epochs} epochs, batch {BATCH_SIZE}, train {len(data[0])} / test "
        f"{len(data[2])}, {seeds} seed(s); mean +- std over seeds; grad evals and time per run."
    )
    report = format_report(results, setting)
    print(report, end="")
    if out is not None:
        write_atomic(Path(out), report)
    return results
