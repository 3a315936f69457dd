"""``alice probe``: which curvature matters for a ReLU and a GELU variant of one network.

Trains a built-in task with Alice for each ``--act``, then reads the optimizer's
statistics (:func:`alice.diagnostics.diagnostics`) and runs the model-fit probe
(:func:`alice.diagnostics.probe`) on a fixed batch of training examples, and prints them side by side,
with the smooth control (logistic regression) in the last column.

With ``--optimizer NAME`` (any optimizer of ``alice compare``: ``adamw``, ``sgd``, ...) it
trains with that optimizer instead and reads the curvature instrument
(:class:`alice.diagnostics.CurvatureMonitor`) along the way, at the same sigma for every
column, so that ReLU, GELU and the control compare without Alice in the loop.

``add_parser(subparsers)`` adds the subcommand to ``alice``'s parser; ``main(argv)``
runs it standalone (``python -m alice.diagnostics.cli --act relu gelu``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .._argtypes import positive_float, positive_int

__all__ = ["add_parser", "main", "run_probe"]

HELD_EXAMPLES = 512
CONTROL = "logreg"
PROBE_LR = 1e-2
"""The lr (= sigma) of every column by default. The glass that Alice estimates on a smooth
loss grows like sigma^1.5 (the gradient's variation over the perturbation), that of kinks
does not; at the tasks' training lr 3e-2 a smooth network already shows some, at 1e-2 the
smooth control reads about 0.05 while ReLU keeps about half."""


@contextmanager
def _single_thread() -> Iterator[None]:
    """Tiny matrices: one intra-op thread is faster (and far faster on busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _loss_fn(logits, y):
    return torch.nn.functional.cross_entropy(logits.flatten(0, -2), y.flatten())


def _task_data(task, seed: int):
    """A run's data: the splits, the held batch (up to ``HELD_EXAMPLES`` training examples)
    and an endless iterator of training batches (seeded epochs), the same for every column."""
    splits = task.load()
    train, n_train = splits.train, len(splits.train)
    held = train.take(torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))[:HELD_EXAMPLES])

    def batches():
        g = torch.Generator().manual_seed(seed)
        order, cursor, size = torch.randperm(n_train, generator=g), 0, task.batch_size
        while True:
            if cursor + size > n_train:
                order, cursor = torch.randperm(n_train, generator=g), 0
            yield train.take(order[cursor: cursor + size])
            cursor += size

    return splits, held, batches()


def _validate(model, splits) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, in eval mode."""
    model.eval()
    with torch.no_grad():
        x_val, y_val = splits.val.take(splits.val.eval_index())
        logits = model(x_val)
        result = _loss_fn(logits, y_val).item(), (logits.argmax(-1) == y_val).float().mean().item()
    model.train()
    return result


def _train(model, opt, batches, steps: int, after_step, create_graph: bool = False) -> float:
    """``steps`` optimizer steps with a closure (one evaluation for torch's optimizers, three
    on Alice's sampling steps), calling ``after_step(step)`` after each; returns the seconds."""
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = next(batches)

        def closure():
            opt.zero_grad()
            loss = _loss_fn(model(x), y)
            loss.backward(create_graph=create_graph)
            return loss

        opt.step(closure)
        after_step(step)
    return time.perf_counter() - start


def train_and_probe(task, act: str, *, steps: int, lr: float, seed: int, draws: int, lengths, every: int) -> dict:
    """Train ``task``'s model with ``act`` for ``steps`` Alice steps; return its final
    statistics, the probe report, the statistics over training and a few summary numbers."""
    from alice import Alice

    from . import diagnostics, probe

    splits, held, batches = _task_data(task, seed)
    torch.manual_seed(seed)
    model = task.model(act)
    opt = Alice(model.named_parameters(), lr=lr, seed=seed)
    history = []

    def read(step):
        if step % every == 0 or step == steps:
            history.append({"step": float(step), **diagnostics(opt, per_param=True)})

    seconds = _train(model, opt, batches, steps, read)
    val_loss, val_acc = _validate(model, splits)
    report = probe(opt, model=model, loss_fn=_loss_fn, batches=[held], layers="module", draws=draws,
                   lengths=lengths, seed=seed)
    return {"act": act, "stats": history[-1], "history": history, "report": report, "val_loss": val_loss,
            "val_acc": val_acc, "train_seconds": seconds}


def train_and_measure(task, act: str, choice, *, steps: int, lr: float, seed: int, sigma: float, every: int,
                      cost: str, draws: int | None) -> dict:
    """Train ``task``'s model with ``act`` for ``steps`` steps of ``choice`` (an optimizer of
    :mod:`alice.harness.optimizers`), reading the curvature instrument every ``every`` steps
    and after the last one on the held batch; return the readings and a few summary numbers."""
    from .monitor import CurvatureMonitor

    splits, held, batches = _task_data(task, seed)
    torch.manual_seed(seed)
    model = task.model(act)
    opt = choice.build(model, lr, seed)
    monitor = CurvatureMonitor(model, lambda m, b: _loss_fn(m(b[0]), b[1]), every=every, cost=cost, sigma=sigma,
                               batches=[held], draws=draws, seed=seed)
    reports = []
    seconds = _train(model, opt, batches, steps, lambda step: reports.append(monitor.step()),
                     create_graph=choice.create_graph)
    report = reports[-1] or monitor.measure()  # always a reading after the last step
    val_loss, val_acc = _validate(model, splits)
    return {"act": act, "records": monitor.records, "report": report, "val_loss": val_loss, "val_acc": val_acc,
            "train_seconds": seconds, "reading_seconds": sum(r["seconds"] for r in monitor.records)}


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or not math.isfinite(value):
        return "nan"
    return format(value, ".3f" if value == 0 or abs(value) >= 0.01 else ".2e")


ALICE_ROWS = [
    ("val loss", lambda r: r["val_loss"]),
    ("val accuracy", lambda r: r["val_acc"]),
    ("glass_fraction", lambda r: r["stats"]["glass_fraction"]),
    ("glass_fraction_weighted", lambda r: r["stats"]["glass_fraction_weighted"]),
    ("h_mean", lambda r: r["stats"]["h_mean"]),
    ("rho_mean", lambda r: r["stats"]["rho_mean"]),
    ("g_zero_fraction", lambda r: r["stats"]["g_zero_fraction"]),
    ("clip_low", lambda r: r["stats"]["clip_low"]),
    ("clip_high", lambda r: r["stats"]["clip_high"]),
    ("step_ratio_adam", lambda r: r["stats"]["step_ratio_adam"]),
    ("probe: H term / D", lambda r: r["report"].rows[0].terms["hessian"] / r["report"].rows[0].decrease),
    ("probe: glass term / D", lambda r: r["report"].rows[0].terms["glass"] / r["report"].rows[0].decrease),
    ("probe: measured at 1 / D", lambda r: _measured_at_one(r["report"])),
    ("probe: err linear", lambda r: r["report"].rows[0].err["linear"]),
    ("probe: err + Hessian", lambda r: r["report"].rows[0].err["hessian"]),
    ("probe: err + H + glass", lambda r: r["report"].rows[0].err["glass"]),
    ("probe: R2 linear", lambda r: r["report"].rows[0].r2["linear"]),
    ("probe: R2 + Hessian", lambda r: r["report"].rows[0].r2["hessian"]),
    ("probe: R2 + H + glass", lambda r: r["report"].rows[0].r2["glass"]),
    ("probe: noise", lambda r: r["report"].rows[0].noise),
    ("probe: best model", lambda r: r["report"].rows[0].best),
]
"""The rows of the Alice table: Alice's last-step statistics, then the probe's overall row."""


def _interval(row: dict, key: str) -> str:
    return f"{_fmt(row[key])} [{_fmt(row[key + '_low'])}, {_fmt(row[key + '_high'])}]"


def _per_d(row: dict, key: str) -> float:
    return row[key] / abs(row["linear"]) if row["linear"] else math.nan


def _fitted(run: dict, model: str, key: str) -> float:
    fit = run["records"][-1]["fit"]
    return fit[model][key] if fit else math.nan


INSTRUMENT_ROWS = [
    ("val loss", lambda r: r["val_loss"]),
    ("val accuracy", lambda r: r["val_acc"]),
    ("glass_fraction [95%]", lambda r: _interval(r["records"][-1], "glass_fraction")),
    ("h_mean", lambda r: r["records"][-1]["h_mean"]),
    ("rho_mean", lambda r: r["records"][-1]["rho_mean"]),
    ("H term / |D|", lambda r: _per_d(r["records"][-1], "hess_term")),
    ("glass term / |D|", lambda r: _per_d(r["records"][-1], "glass_term")),
    ("verdict", lambda r: r["records"][-1]["verdict"]),
    ("fit: err linear / |D|", lambda r: _fitted(r, "linear", "error_rel")),
    ("fit: err + Hessian / |D|", lambda r: _fitted(r, "hessian", "error_rel")),
    ("fit: err + H + glass / |D|", lambda r: _fitted(r, "glass", "error_rel")),
    ("fit: R2 + H + glass", lambda r: _fitted(r, "glass", "r2")),
    ("seconds training", lambda r: r["train_seconds"]),
    ("seconds reading", lambda r: r["reading_seconds"]),
]
"""The rows of the instrument table: its last reading (after the last step)."""


def side_by_side(runs: list[tuple[str, dict]], rows=ALICE_ROWS, width: int = 12) -> str:
    """The comparison table: one column per run, one line per ``(label, get)`` of ``rows``."""
    width = max(width, *(len(name) + 2 for name, _ in runs))
    label_width = max(26, *(len(label) + 2 for label, _ in rows))
    out = [f"{'':<{label_width}}" + "".join(f"{name:>{width}}" for name, _ in runs),
           "-" * (label_width + width * len(runs))]
    for label, get in rows:
        out.append(f"{label:<{label_width}}" + "".join(f"{_fmt(get(r)):>{width}}" for _, r in runs))
    return "\n".join(out)


def over_training(runs: list[tuple[str, dict]], width: int = 26) -> str:
    """The instrument's glass fraction (95% interval) at every reading, one column per run."""
    width = max(width, *(len(name) + 2 for name, _ in runs))
    by_step = [{r["step"]: r for r in run["records"]} for _, run in runs]
    steps = sorted(set().union(*by_step))
    out = [f"{'step':<8}" + "".join(f"{name:>{width}}" for name, _ in runs), "-" * (8 + width * len(runs))]
    for step in steps:
        cells = [_interval(b[step], "glass_fraction") + f" {b[step]['verdict'][0]}" if step in b else ""
                 for b in by_step]
        out.append(f"{step:<8}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(out)


def _measured_at_one(report) -> float:
    row = report.rows[0]
    if 1.0 not in report.lengths or row.decrease <= 0:
        return math.nan
    return row.measured[report.lengths.index(1.0)] / row.decrease


def verdict(name: str, run: dict) -> str:
    """One sentence on which curvature terms the numbers support (the probe's ``best``
    makes a richer model earn its term by more than twice the noise)."""
    row, stats = run["report"].rows[0], run["stats"]
    reading = {
        "glass": "the glass term improves the fit beyond the Hessian",
        "hessian": "the Hessian term improves the fit; the glass term adds nothing beyond the noise",
        "linear": "neither curvature term improves on the linear model beyond the noise",
    }.get(row.best, "the probe could not compare the models")
    return (f"{name}: {reading} (errors {row.err['linear']:.2f} / {row.err['hessian']:.2f} / "
            f"{row.err['glass']:.2f} D); glass makes {stats['glass_fraction']:.0%} of Alice's curvature "
            f"({stats['glass_fraction_weighted']:.0%} weighted by the step), and {stats['clip_high']:.0%} "
            "of steps are cut by the upper bound.")


def instrument_verdict(name: str, run: dict) -> str:
    """One sentence on the instrument's last reading: the glass share with its interval, the
    verdict, and what the fit of the three models says (where the cost measured it)."""
    last = run["records"][-1]
    text = (f"{name}: glass makes {last['glass_fraction']:.0%} [{last['glass_fraction_low']:.0%}, "
            f"{last['glass_fraction_high']:.0%}] of the expected-loss curvature along the step; "
            f"verdict {last['verdict']}")
    if last["fit"]:
        errors = " / ".join(f"{last['fit'][m]['error_rel']:.2f}" for m in ("linear", "hessian", "glass"))
        text += f"; errors of linear / + Hessian / + glass {errors} |D|"
    return text + "."


def _plan(task: str, acts, control: bool):
    from ..harness.tasks import TASKS as tasks  # the comparison harness's real-data tasks

    if task not in tasks:
        raise ValueError(f"Invalid task: {task!r} (valid: {', '.join(tasks)})")
    plan = [(tasks[task], act, act if tasks[task].has_act else "smooth") for act in
            (acts if tasks[task].has_act else acts[:1])]
    if control and task != CONTROL and CONTROL in tasks:
        plan.append((tasks[CONTROL], acts[0], f"{CONTROL} (control)"))
    return tasks[task], plan


def _plot_path(plot_path, name: str) -> Path:
    path = Path(plot_path)
    return path.with_name(f"{path.stem}-{name.split()[0]}{path.suffix or '.png'}")


def _per_column(runs, heading: str, sentence, out) -> None:
    """Each run's report table under ``[column] heading``, then one ``sentence`` per run."""
    for name, run in runs:
        out(f"[{name}] {heading}")
        out(run["report"].table())
        out("")
    for name, run in runs:
        out(sentence(name, run))


def _write_json(json_path, payload) -> None:
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(payload, indent=1, allow_nan=True))


def run_probe(task: str = "digits-mlp", acts=("relu", "gelu"), *, control: bool = True, steps: int | None = None,
              lr: float | None = None, seed: int = 0, draws: int | None = None, lengths=None, every: int = 25,
              optimizer: str | None = None, sigma: float | None = None, cost: str | None = None,
              json_path=None, plot_path=None, out=print) -> list[tuple[str, dict]]:
    """Run ``alice probe`` and print its tables; returns ``[(column name, run), ...]``.

    Without ``optimizer``: Alice trains each column (at ``lr``, default ``PROBE_LR``); its
    statistics and the probe (``draws``, default 8, and ``lengths``) are printed. With
    ``optimizer`` (an ``alice compare --optimizer`` value): that optimizer trains (at ``lr``,
    else its ``lr=`` setting, else the task's default), and the curvature instrument reads
    at ``sigma`` (default ``PROBE_LR``) with ``cost`` (default ``"business"``; ``draws``
    overrides the preset's) every ``every`` steps and after the last."""
    if optimizer is None:
        for name, value in (("sigma", sigma), ("cost", cost)):
            if value is not None:
                raise ValueError(f"Invalid {name}: {value!r} (the instrument's setting, with --optimizer; "
                                 "Alice's sigma is its --lr)")
        return _run_alice(task, acts, control, steps, lr, seed, draws or 8, lengths, every, json_path, plot_path, out)
    if lengths is not None:
        raise ValueError(f"Invalid lengths: {lengths!r} (the probe's, without --optimizer; the instrument "
                         "fits at 0.25, 0.5 and 1 times its step)")
    return _run_instrument(task, acts, control, steps, lr, seed, draws, every, optimizer, sigma or PROBE_LR,
                           cost or "business", json_path, plot_path, out)


def _run_alice(task, acts, control, steps, lr, seed, draws, lengths, every, json_path, plot_path, out):
    from .probe import DEFAULT_LENGTHS

    spec, plan = _plan(task, acts, control)
    lengths = tuple(lengths or DEFAULT_LENGTHS)
    runs = []
    with _single_thread():
        for t, act, column in plan:
            run = train_and_probe(t, act, steps=steps or t.steps, lr=lr or PROBE_LR, seed=seed,
                                  draws=draws, lengths=lengths, every=every)
            run["task"], run["lr"], run["steps"] = t.name, lr or PROBE_LR, steps or t.steps
            runs.append((column, run))
    first = runs[0][1]
    out(f"alice probe: task {task} ({spec.summary}), {first['steps']} Alice steps at lr {first['lr']:g}, "
        f"seed {seed}; statistics of Alice's last step; probe on a fixed batch of up to {HELD_EXAMPLES} "
        "training examples")
    out("")
    out(side_by_side(runs))
    out("")
    _per_column(runs, "probe per layer (errors in units of D, the linear decrease promised at length 1)",
                verdict, out)
    if json_path is not None:
        _write_json(json_path, [{"column": name, "task": r["task"], "act": r["act"], "lr": r["lr"],
                                 "steps": r["steps"], "val_loss": r["val_loss"], "val_acc": r["val_acc"],
                                 "stats": r["stats"], "probe": r["report"].to_dict(prefix=""),
                                 "history": r["history"]} for name, r in runs])
    if plot_path is not None:
        from .plots import plot

        for name, run in runs:
            target = _plot_path(plot_path, name)
            plot(run["history"], probe=run["report"], path=target, title=f"{run['task']} / {name}")
            out(f"plot written to {target}")
    return runs


def _run_instrument(task, acts, control, steps, lr, seed, draws, every, optimizer, sigma, cost, json_path,
                    plot_path, out):
    from ..harness.optimizers import parse
    from .monitor import COSTS

    if cost not in COSTS:
        raise ValueError(f"Invalid cost: {cost!r} (must be one of {', '.join(COSTS)})")
    choice = parse(optimizer)
    if lr is not None and choice.lr is not None and lr != choice.lr:
        raise ValueError(f"Invalid lr: --lr {lr:g} and --optimizer {optimizer!r} disagree (give one)")
    spec, plan = _plan(task, acts, control)
    runs = []
    with _single_thread():
        for t, act, column in plan:
            run_lr = lr or choice.default_lr(t)
            run = train_and_measure(t, act, choice, steps=steps or t.steps, lr=run_lr, seed=seed, sigma=sigma,
                                    every=every, cost=cost, draws=draws)
            run.update(task=t.name, lr=run_lr, steps=steps or t.steps)
            runs.append((column, run))
    first = runs[0][1]
    settings = dict(COSTS[cost], **({"draws": draws} if draws else {}))
    layers = "per module" if settings["layers"] else "overall only"
    lrs = ", ".join(f"{name} {run['lr']:g}" for name, run in runs)
    out(f"alice probe: task {task} ({spec.summary}), {first['steps']} steps of {choice.label} (lr: {lrs}), "
        f"seed {seed}; the curvature instrument at sigma {sigma:g} every {every} steps and after the last "
        f"(cost {cost}: {settings['draws']} draws, {layers}, {'with' if settings['fit'] else 'no'} fit) "
        f"on a fixed batch of up to {HELD_EXAMPLES} training examples")
    out("")
    out(side_by_side(runs, INSTRUMENT_ROWS, width=22))
    out("")
    out("glass fraction [95% interval] and verdict (f flat, g glass, h hessian, u unclear) over training")
    out(over_training(runs))
    out("")
    _per_column(runs, "the instrument after the last step", instrument_verdict, out)
    if json_path is not None:
        _write_json(json_path, [{"column": name, "task": r["task"], "act": r["act"], "optimizer": choice.label,
                                 "lr": r["lr"], "sigma": sigma, "cost": cost, "steps": r["steps"],
                                 "val_loss": r["val_loss"], "val_acc": r["val_acc"],
                                 "train_seconds": r["train_seconds"],
                                 "records": r["records"]} for name, r in runs])
    if plot_path is not None:
        from .plots import plot_curvature

        for name, run in runs:
            target = _plot_path(plot_path, name)
            plot_curvature(run["records"], path=target, title=f"{run['task']} / {name} / {choice.label}")
            out(f"plot written to {target}")
    return runs


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``probe`` subcommand to ``alice``'s subparsers (sets ``handler``)."""
    parser = subparsers.add_parser(
        "probe", help="which curvature (Hessian, glass, or neither) governs a model: ReLU vs GELU",
        description="Train a small task with Alice for each activation, then print Alice's step statistics "
        "and the model-fit probe (linear, + Hessian, + glass) side by side, with a smooth control. "
        "With --optimizer, train with that optimizer instead and read the curvature instrument along the way.",
    )
    parser.add_argument("--task", default="digits-mlp",
                        help="task name (default digits-mlp; logreg is the smooth control)")
    parser.add_argument("--act", nargs="+", default=["relu", "gelu"], choices=["relu", "gelu"],
                        help="activations to compare (default: relu gelu)")
    parser.add_argument("--optimizer", default=None,
                        help="train with this optimizer of alice compare (adamw, sgd, adam, ...; NAME,key=value "
                        "or module:Class) and read the curvature instrument; default: Alice and its probe")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the task's)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help=f"Alice lr, the perturbation length sigma (default {PROBE_LR:g} for every column); "
                        "with --optimizer: that optimizer's lr (default: the task's for it)")
    parser.add_argument("--sigma", type=positive_float, default=None,
                        help=f"with --optimizer: the instrument's sigma (default {PROBE_LR:g} for every column)")
    parser.add_argument("--cost", default=None, choices=["economy", "business", "full"],
                        help="with --optimizer: what each reading measures (default business; see docs/diagnostics.md)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the batches and the probe")
    parser.add_argument("--draws", type=positive_int, default=None,
                        help="Rademacher draws of the probe (default 8); with --optimizer: of the instrument "
                        "(default: the cost's)")
    parser.add_argument("--lengths", type=positive_float, nargs="+", default=None,
                        help="multiples of Alice's step to probe at (default 0.25 0.5 1 2)")
    parser.add_argument("--every", type=positive_int, default=25,
                        help="steps between two statistics (or, with --optimizer, instrument) readings")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="leave out the logistic-regression control column")
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    parser.add_argument("--plot", default=None, help="write heatmaps and the probe table (with --optimizer: the "
                        "glass fraction and the models' errors over training) to PATH-<act>.png")
    parser.set_defaults(handler=_handle)
    return parser


def _handle(args: argparse.Namespace) -> int:
    run_probe(args.task, tuple(args.act), control=args.control, steps=args.steps, lr=args.lr, seed=args.seed,
              draws=args.draws, lengths=args.lengths, every=args.every, optimizer=args.optimizer, sigma=args.sigma,
              cost=args.cost, json_path=args.json, plot_path=args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``alice probe`` standalone: ``python -m alice.diagnostics.cli [options]``."""
    parser = argparse.ArgumentParser(prog="alice")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_parser(commands)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] == ["probe"] else ["probe", *argv])
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
