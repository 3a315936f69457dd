"""``alice compare``: plan the runs, train them interleaved, record every evaluation point.

Fair measurement, as the issue asks: every optimizer trains the same model from the
same initialisation on the same mini-batches (both set by the seed); train loss,
gradient evaluations and optimizer-step wall time are recorded per step; validation
and test metrics at fixed intervals (evaluation time is not counted). Runs are
interleaved (seed by seed, every optimizer in turn) so slow drifts of the machine
fall on all optimizers alike.

With ``sweep = K > 1`` each optimizer first runs ``K`` learning rates (its default
times ``sweep_factor ** j`` for ``j`` centred on 0) on the first ``sweep_seeds`` seeds;
the lr with the lowest mean final validation loss is then run on every seed, and
only those runs are reported on test. Every optimizer gets the same grid size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
import math
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import optimizers, records, stats
from .models import ACTIVATIONS
from .tasks import Splits, Task, batches, evaluate, get_task, loss_fn


WARMUP_STEPS = 12  # past Alice's 10 warm-up sampling steps, so its quick step is compiled/warm too


@dataclass
class Settings:
    """Everything ``alice compare`` takes; the defaults of the task fill what is ``None``."""

    task: str = "digits-mlp"
    optimizers: tuple[str, ...] = ("alice", "adam")
    seeds: int = 3
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    sweep: int = 1
    sweep_factor: float = 3.0
    sweep_seeds: int = 1
    act: str = "relu"
    threads: int = 1
    data: str | None = None
    device: str = "cpu"
    out: Path = Path("runs/compare")
    progress: bool = True
    command: str = ""


@dataclass(frozen=True)
class Run:
    """One training run; ``key`` identifies it in the results file (resume skips finished keys)."""

    task: str
    optimizer: optimizers.Choice
    lr: float
    seed: int
    steps: int
    batch_size: int
    eval_every: int
    device: str
    grid: tuple[float, ...] = field(default=())

    @property
    def key(self) -> str:
        return json.dumps(dict(task=self.task, optimizer=self.optimizer.label, lr=self.lr, seed=self.seed,
                               steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                               device=self.device), sort_keys=True)

    def header(self) -> dict:
        return dict(run=self.key, task=self.task, optimizer=self.optimizer.label, lr=self.lr, seed=self.seed,
                    steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every, grid=list(self.grid))


def _positive(name: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be {'an integer' if kind is int else 'a number'} > 0)")


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"Invalid --device: {text!r} (valid: cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Invalid --device: {text!r} (valid: cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid --device: {text!r}: CUDA is not available on this machine (valid: cpu)")
    return device


def train(run: Run, task: Task, act: str, splits: Splits, device: torch.device, write, tick) -> None:
    """Train one run and ``write`` a row at step 0, every ``eval_every`` steps and at the end."""
    torch.manual_seed(run.seed)  # the initialisation, and the global RNG of Hutchinson optimizers
    model = task.model(act).to(device)
    opt = run.optimizer.build(model, run.lr, run.seed)
    order = batches(len(splits.train), run.batch_size, torch.Generator().manual_seed(run.seed))
    attempt, evals, seconds = uuid.uuid4().hex, 0, 0.0
    losses, step_evals, step_seconds = [], [], []
    calls, x, y = 0, None, None

    def closure():
        nonlocal calls
        calls += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=run.optimizer.create_graph)
        return loss

    def checkpoint(step: int) -> None:
        val_loss, val_acc = evaluate(model, splits.val)
        test_loss, test_acc = evaluate(model, splits.test)
        write(dict(run.header(), attempt=attempt, step=step, grad_evals=evals, seconds=seconds,
                   train_loss=losses.copy(), step_evals=step_evals.copy(), step_seconds=step_seconds.copy(),
                   val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc,
                   done=step == run.steps))
        for buffer in (losses, step_evals, step_seconds):
            buffer.clear()

    checkpoint(0)
    with warnings.catch_warnings():
        # create_graph=True (AdaHessian, Sophia) makes torch warn of a grad<->param reference
        # cycle; the closure sets every .grad to None before each backward, which breaks it.
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        for step in range(1, run.steps + 1):
            x, y = splits.train.take(next(order))
            calls, start = 0, time.perf_counter()
            loss = opt.step(closure)
            value = float(loss.detach())  # waits for the device: the step's time is the time of its work
            seconds += time.perf_counter() - start
            evals += calls + optimizers.hvp_evals(opt, step)
            losses.append(value if math.isfinite(value) else None)
            step_evals.append(evals)
            step_seconds.append(round(seconds, 6))
            tick()
            if step % run.eval_every == 0 or step == run.steps:
                checkpoint(step)


def _grid(center: float, size: int, factor: float) -> tuple[float, ...]:
    """``size`` learning rates spaced by ``factor`` and centred (geometrically) on ``center``."""
    return tuple(float(f"{center * factor ** (j - (size - 1) / 2):.3g}") for j in range(size))


def compare(settings: Settings) -> Path:
    """Run (or resume) the comparison that ``settings`` describes; returns the report's path."""
    from . import report

    task = get_task(settings.task)
    if settings.act not in ACTIVATIONS:
        raise ValueError(f"Invalid --act: {settings.act!r} (valid: {', '.join(ACTIVATIONS)})")
    choices = [optimizers.parse(text) for text in settings.optimizers]
    if len({c.label for c in choices}) != len(choices):
        raise ValueError(f"Invalid --optimizer: the same optimizer given twice in {list(settings.optimizers)}")
    steps = settings.steps or task.steps
    batch_size = settings.batch_size or task.batch_size
    eval_every = settings.eval_every or max(1, steps // 10)
    for name, value in (("--seeds", settings.seeds), ("--steps", steps), ("--batch-size", batch_size),
                        ("--eval-every", eval_every), ("--sweep", settings.sweep), ("--threads", settings.threads),
                        ("--sweep-seeds", settings.sweep_seeds)):
        _positive(name, value)
    _positive("--sweep-factor", settings.sweep_factor, (int, float))
    if settings.sweep > 1 and settings.sweep_factor <= 1:
        raise ValueError(f"Invalid --sweep-factor: {settings.sweep_factor!r} (must be > 1 for a sweep)")
    device = _device(settings.device)
    lrs = {c.label: c.default_lr(task) for c in choices}  # fails early on a missing default

    label = task.label(settings.act)
    splits = task.load(settings.data).to(device)
    out = Path(settings.out)
    path = out / records.RESULTS
    writer = records.Writer(path)
    done = set(records.finished_runs(records.read_rows(path)))
    context = dict(command=settings.command, versions=records.versions(), device=records.describe_device(device, settings.threads),
                   data=splits.note)

    def make(choice, lr, seed, grid=()):
        return Run(label, choice, lr, seed, steps, batch_size, eval_every, device.type, grid)

    sweep_seeds = min(settings.sweep_seeds, settings.seeds) if settings.sweep > 1 else 0
    grids = {c.label: _grid(lrs[c.label], settings.sweep, settings.sweep_factor) for c in choices}
    sweep = [make(c, grids[c.label][i], seed, grids[c.label]) for seed in range(sweep_seeds)
             for i in range(settings.sweep) for c in choices]
    total = (len(sweep) + (settings.seeds - sweep_seeds) * len(choices)) * steps
    tqdm = _tqdm()
    warmed: set[str] = set()
    with tqdm(total=total, disable=not settings.progress, unit="step", dynamic_ncols=True) as bar, \
            _threads(settings.threads):
        resumed: set[str] = set()  # runs an earlier command finished: out of the total, named in the bar

        def execute(runs):
            for run in runs:
                if run.key in done:
                    resumed.add(run.key)
                    bar.total -= run.steps
                    bar.set_postfix_str(f"{len(resumed)} {'run' if len(resumed) == 1 else 'runs'} already done")
                    continue
                bar.set_description(f"{label} {run.optimizer.label} lr={run.lr:g} seed {run.seed}")
                if run.optimizer.label not in warmed:  # untimed: first calls pay for lazy initialisation
                    warm = Run(label, run.optimizer, run.lr, run.seed, min(steps, WARMUP_STEPS), batch_size,
                               steps, device.type)
                    train(warm, task, settings.act, splits, device, lambda row: None, lambda: None)
                    warmed.add(run.optimizer.label)
                train(run, task, settings.act, splits, device, lambda row: writer.write({**row, **context}),
                      lambda: bar.update(1))
                done.add(run.key)

        execute(sweep)
        if sweep:
            finished = records.finished_runs(records.read_rows(path))
            for c in choices:
                keys = {run.key for run in sweep if run.optimizer is c}
                lrs[c.label] = stats.choose_lr([finished[k] for k in keys])
        # The first sweep_seeds seeds already ran the chosen lr inside the sweep.
        execute([make(c, lrs[c.label], seed, grids[c.label] if sweep else ())
                 for seed in range(sweep_seeds, settings.seeds) for c in choices])
    return report.write_report(out)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run torch's CPU work on ``count`` intra-op threads (default 1). The harness's models are
    small, and on a machine whose cores are busy several threads wait on each other, making
    seconds-per-step swing tenfold; one thread keeps CPU timings comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError("alice compare needs tqdm: pip install 'alice-optimizer[compare]'") from error
    return tqdm
