"""``alice compare``: plan the runs, train them interleaved, record every evaluation point.

Fair measurement: every optimizer trains the same model from the same initialisation on
the same mini-batches (both set by the seed); train loss, gradient evaluations and
optimizer-step wall time are recorded per step; the validation metrics every
``eval_every`` steps (default 2% of a run; evaluation time is not counted). Runs are
interleaved (seed by seed, every optimizer in turn) so slow drifts of the machine fall
on all optimizers alike. Alice runs also record ``opt.diagnostics()`` at every
evaluation point and, in final runs, the model-fit probe at a third, two thirds and the
end of the run.

Selection (``sweep = K > 1``): each optimizer runs ``K`` learning rates (its default
times ``sweep_factor ** j``, centred on 0) on the selection seeds ``SWEEP_SEED,
SWEEP_SEED + 1, ...``; the lr with the best mean final *headline* validation metric
(accuracy for classification, loss for language models, see :func:`stats.choose_lr`)
wins. A choice at an end of the grid extends the grid one factor beyond it, up to
``max_extend`` times per optimizer (the report flags a choice still at an edge). Final
runs then use the seeds ``0 .. seeds-1``, disjoint from the selection seeds, and read the
test split once, at their last step. Every row says its ``phase`` ("sweep" or "final").

Budgets: ``budget="steps=N"`` (the default: the task's steps) or ``"evals=N"``: each
optimizer runs as many steps as ``N`` gradient evaluations allow (the counting rule is in
:mod:`.optimizers`), the sweep too, so its lr is tuned for that budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
import math
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import alice

from . import optimizers, records, stats
from .models import ACTIVATIONS
from .tasks import WARMUP_SHARE, Splits, Task, batches, evaluate, get_task, loss_fn


WARMUP_STEPS = 12  # past Alice's 10 warm-up sampling steps, so its quick step is compiled/warm too
SWEEP_SEED = 1000  # selection seeds start here, so they never meet the final seeds 0, 1, ...
EVAL_SHARE = 50  # evaluations per run by default: one every 2% of it
PROBE_EXAMPLES = 128  # held validation examples the probe's loss averages over
PROBE_SHARES = (1 / 3, 2 / 3, 1.0)  # where in a final Alice run the probe measures
EXTRAS = ("tqdm", "matplotlib", "scipy")


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
    sweep_factor: float = 2.0
    sweep_seeds: int = 2
    max_extend: int = 2
    reference: str = "adam"
    budget: str | None = None
    target: float | None = None
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
    phase: str = "final"  # "sweep", "final" (or "warm": untimed, never written)
    budget: str = ""

    @property
    def key(self) -> str:
        return json.dumps(dict(task=self.task, optimizer=self.optimizer.label, lr=self.lr, seed=self.seed,
                               steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every,
                               device=self.device, phase=self.phase, budget=self.budget), sort_keys=True)

    def header(self) -> dict:
        return dict(run=self.key, task=self.task, optimizer=self.optimizer.label, lr=self.lr, seed=self.seed,
                    steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every, phase=self.phase,
                    budget=self.budget)


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


def parse_budget(text: str | None, steps: int) -> tuple[str, int]:
    """``"steps=N"`` or ``"evals=N"`` as (kind, N); None means ``steps`` steps."""
    if text is None:
        return "steps", steps
    kind, sep, value = text.partition("=")
    if not sep or kind not in ("steps", "evals") or not value.isdigit() or int(value) <= 0:
        raise ValueError(f"Invalid --budget: {text!r} (valid: steps=N or evals=N, N an integer > 0)")
    return kind, int(value)


def check_extras() -> None:
    """Fail before anything is trained or written if a package of the compare extra is missing."""
    import importlib

    for name in EXTRAS:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"alice compare needs {name}: pip install 'alice-optimizer[compare]'") from error


def _clean(values: dict) -> dict:
    """Floats for JSON: NaN and infinities become None."""
    return {k: (v if isinstance(v, str) or math.isfinite(v) else None) for k, v in values.items()}


def _probe(opt, model, held) -> dict | None:
    """The model-fit probe's overall row at this point, or None before Alice has a step to probe."""
    if opt.steps <= opt.warmup_steps:
        return None
    from alice.diagnostics import probe

    row = probe(opt, model=model, loss_fn=loss_fn, batches=[held], layers="none",
                                  draws=4, seed=0).row("all")
    return _clean({**{f"err_{m}": row.err[m] for m in row.err}, "noise": row.noise, "best": row.best,
                   "hess_term": row.terms["hessian"] / row.decrease if row.decrease > 0 else math.nan,
                   "glass_term": row.terms["glass"] / row.decrease if row.decrease > 0 else math.nan})


def train(run: Run, task: Task, act: str, splits: Splits, device: torch.device, write, tick) -> None:
    """Train one run and ``write`` a row at step 0, every ``eval_every`` steps and at the end;
    the test split is read once, at the end of a final run."""
    torch.manual_seed(run.seed)  # the initialisation, and the global RNG of Hutchinson optimizers
    model = task.model(act).to(device)
    opt = run.optimizer.build(model, run.lr, run.seed)
    order = batches(len(splits.train), run.batch_size, torch.Generator().manual_seed(run.seed))
    attempt, evals, seconds = uuid.uuid4().hex, 0, 0.0
    losses, step_evals, step_seconds = [], [], []
    calls, x, y = 0, None, None
    scheduler = _schedule(opt, run.steps) if task.schedule else None
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,  # noqa: E731
                                      enabled=task.bf16 and device.type == "cuda")
    is_alice = isinstance(opt, alice.Alice) and run.phase != "warm"
    points = [*range(run.eval_every, run.steps, run.eval_every), run.steps]  # evaluations after step 0
    probes = {next(p for p in points if p >= share * run.steps) for share in PROBE_SHARES} \
        if is_alice and run.phase == "final" else set()
    held = splits.val.take(splits.val.eval_index()[:PROBE_EXAMPLES])

    def closure():
        nonlocal calls
        calls += 1
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward(create_graph=run.optimizer.create_graph)
        return loss

    def checkpoint(step: int) -> None:
        with autocast():
            val_loss, val_acc = evaluate(model, splits.val)
            test_loss, test_acc = evaluate(model, splits.test) if run.phase == "final" and step == run.steps \
                else (None, None)
        row = dict(run.header(), attempt=attempt, step=step, grad_evals=evals, seconds=seconds,
                   train_loss=losses.copy(), step_evals=step_evals.copy(), step_seconds=step_seconds.copy(),
                   val_loss=val_loss, val_acc=val_acc, test_loss=test_loss, test_acc=test_acc,
                   done=step == run.steps)
        if is_alice and step > 0:
            row["diagnostics"] = _clean(opt.diagnostics())
            if step in probes:
                row["probe"] = _probe(opt, model, held)
        write(row)
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
            if scheduler is not None:
                scheduler.step()
            evals += calls + optimizers.hvp_evals(opt, step)
            losses.append(value if math.isfinite(value) else None)
            step_evals.append(evals)
            step_seconds.append(round(seconds, 6))
            tick()
            if step % run.eval_every == 0 or step == run.steps:
                checkpoint(step)


def _schedule(opt, steps: int):
    """Linear warm-up over ``WARMUP_SHARE`` of the steps, then cosine decay towards 0 (for Alice
    the perturbation length sigma and the step bounds follow the lr)."""
    warm = max(1, int(WARMUP_SHARE * steps))

    def factor(n: int) -> float:
        return (n + 1) / warm if n < warm else 0.5 * (1 + math.cos(math.pi * (n - warm) / max(1, steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _grid(center: float, size: int, factor: float) -> tuple[float, ...]:
    """``size`` learning rates spaced by ``factor`` and centred (geometrically) on ``center``."""
    return tuple(_round(center * factor ** (j - (size - 1) / 2)) for j in range(size))


def _round(lr: float) -> float:
    return float(f"{lr:.3g}")


def compare(settings: Settings) -> Path:
    """Run (or resume) the comparison that ``settings`` describes; returns the report's path."""
    from . import report

    check_extras()
    task = get_task(settings.task)
    if settings.act not in ACTIVATIONS:
        raise ValueError(f"Invalid --act: {settings.act!r} (valid: {', '.join(ACTIVATIONS)})")
    choices = [optimizers.parse(text) for text in settings.optimizers]
    labels = [c.label for c in choices]
    if len(set(labels)) != len(choices):
        raise ValueError(f"Invalid --optimizer: the same optimizer given twice in {list(settings.optimizers)}")
    if len(choices) > 1 and settings.reference not in labels:
        raise ValueError(f"Invalid --reference: {settings.reference!r} is not among the optimizers {labels}")
    kind, amount = parse_budget(settings.budget, settings.steps or task.steps)
    batch_size = settings.batch_size or task.batch_size
    for name, value in (("--seeds", settings.seeds), ("--steps", amount), ("--batch-size", batch_size),
                        ("--sweep", settings.sweep), ("--threads", settings.threads),
                        ("--sweep-seeds", settings.sweep_seeds)):
        _positive(name, value)
    if settings.eval_every is not None:
        _positive("--eval-every", settings.eval_every)
    if isinstance(settings.max_extend, bool) or not isinstance(settings.max_extend, int) or settings.max_extend < 0:
        raise ValueError(f"Invalid --max-extend: {settings.max_extend!r} (must be an integer >= 0)")
    _positive("--sweep-factor", settings.sweep_factor, (int, float))
    if settings.sweep > 1 and settings.sweep_factor <= 1:
        raise ValueError(f"Invalid --sweep-factor: {settings.sweep_factor!r} (must be > 1 for a sweep)")
    if settings.target is not None and not math.isfinite(settings.target):
        raise ValueError(f"Invalid --target: {settings.target!r} (must be a finite number)")
    device = _device(settings.device)
    lrs = {c.label: c.default_lr(task) for c in choices}  # fails early on a missing default
    steps = {c.label: amount if kind == "steps" else optimizers.steps_within(c, task.model(settings.act), lrs[c.label],
                                                                             amount) for c in choices}
    for label, count in steps.items():
        if count == 0:
            raise ValueError(f"Invalid --budget: {settings.budget!r} allows {label} no step")

    label = task.label(settings.act)
    splits = task.load(settings.data).to(device)
    out = Path(settings.out)
    path = out / records.RESULTS
    writer = records.Writer(path)
    done = set(records.finished_runs(records.read_rows(path)))
    context = dict(command=settings.command, versions=records.versions(),
                   device=records.describe_device(device, settings.threads), data=splits.note,
                   reference=settings.reference, target=settings.target)
    budget = f"{kind}={amount}"

    def make(choice, lr, seed, phase):
        n = steps[choice.label]
        every = min(n, settings.eval_every or max(1, n // EVAL_SHARE))
        return Run(label, choice, lr, seed, n, batch_size, every, device.type, phase, budget)

    sweep_seeds = [SWEEP_SEED + i for i in range(settings.sweep_seeds)] if settings.sweep > 1 else []
    grids = {c.label: list(_grid(lrs[c.label], settings.sweep, settings.sweep_factor)) for c in choices}
    first = [make(c, lr, seed, "sweep") for seed in sweep_seeds for i in range(settings.sweep)
             for c in choices for lr in grids[c.label][i:i + 1]]
    total = sum(r.steps for r in first) + settings.seeds * sum(steps.values())
    tqdm = _tqdm()
    warmed: set[str] = set()
    with tqdm(total=total, disable=not settings.progress, unit="step", dynamic_ncols=True) as bar, \
            _threads(settings.threads):
        resumed = 0

        def execute(runs):
            nonlocal resumed
            for run in runs:
                if run.key in done:  # finished before this resume: not counted as progress
                    resumed += 1
                    bar.total -= run.steps
                    bar.set_postfix_str(f"{resumed} runs already done", refresh=True)
                    continue
                bar.set_description(f"{label} {run.optimizer.label} lr={run.lr:g} seed {run.seed}")
                if run.optimizer.label not in warmed:  # untimed: first calls pay for lazy initialisation
                    warm = Run(label, run.optimizer, run.lr, run.seed, min(run.steps, WARMUP_STEPS), batch_size,
                               run.steps, device.type, "warm")
                    train(warm, task, settings.act, splits, device, lambda row: None, lambda: None)
                    warmed.add(run.optimizer.label)
                # The context (command, versions, device, data) once per run, on its first row.
                train(run, task, settings.act, splits, device,
                      lambda row: writer.write({**row, **context} if row["step"] == 0 else row),
                      lambda: bar.update(1))
                done.add(run.key)

        execute(first)
        extended = {c.label: 0 for c in choices}
        while sweep_seeds:
            finished = records.finished_runs(records.read_rows(path))
            more = []
            for c in choices:
                grid = grids[c.label]
                lrs[c.label] = stats.choose_lr([finished[make(c, lr, s, "sweep").key] for lr in grid
                                                for s in sweep_seeds], task.target.metric,
                                               task.target.higher_is_better)
                if lrs[c.label] in (grid[0], grid[-1]) and extended[c.label] < settings.max_extend:
                    extended[c.label] += 1
                    low = lrs[c.label] == grid[0]
                    new = _round(grid[0] / settings.sweep_factor if low else grid[-1] * settings.sweep_factor)
                    grid.insert(0 if low else len(grid), new)
                    more += [make(c, new, s, "sweep") for s in sweep_seeds]
            if not more:
                break
            bar.total += sum(r.steps for r in more)
            execute(more)
        execute([make(c, lrs[c.label], seed, "final") for seed in range(settings.seeds) for c in choices])
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
