"""``alice probe``: which curvature matters for a ReLU and a GELU variant of one network.

Trains a built-in task with Alice for each ``--act``, then reads the optimizer's
statistics (:func:`alice.diagnostics.diagnostics`) and runs the model-fit probe
(:func:`alice.diagnostics.probe`) on a fixed batch of training examples, and prints them side by side,
with the smooth control (logistic regression) in the last column.

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


def train_and_probe(task, act: str, *, steps: int, lr: float, seed: int, draws: int, lengths, every: int) -> dict:
    """Train ``task``'s model with ``act`` for ``steps`` Alice steps; return its final
    statistics, the probe report, the statistics over training and a few summary numbers."""
    from alice import Alice

    from . import diagnostics, probe

    splits = task.load()
    torch.manual_seed(seed)
    model = task.model(act)
    opt = Alice(model.named_parameters(), lr=lr, seed=seed)
    g = torch.Generator().manual_seed(seed)
    train, n_train = splits.train, len(splits.train)
    held = train.take(torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 1))[:HELD_EXAMPLES])
    history, order, cursor = [], torch.randperm(n_train, generator=g), 0
    batch = task.batch_size
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if cursor + batch > n_train:
            order, cursor = torch.randperm(n_train, generator=g), 0
        x, y = train.take(order[cursor: cursor + batch])
        cursor += batch

        def closure():
            opt.zero_grad()
            loss = _loss_fn(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        if step % every == 0 or step == steps:
            history.append({"step": float(step), **diagnostics(opt, per_param=True)})
    seconds = time.perf_counter() - start
    stats = history[-1]
    model.eval()
    with torch.no_grad():
        x_val, y_val = splits.val.take(splits.val.eval_index())
        logits = model(x_val)
        val_loss, val_acc = _loss_fn(logits, y_val).item(), (logits.argmax(-1) == y_val).float().mean().item()
    model.train()
    report = probe(opt, model=model, loss_fn=_loss_fn, batches=[held], layers="module", draws=draws,
                   lengths=lengths, seed=seed)
    return {"act": act, "stats": stats, "history": history, "report": report, "val_loss": val_loss,
            "val_acc": val_acc, "train_seconds": seconds}


def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    if value is None or not math.isfinite(value):
        return "nan"
    return format(value, ".3f" if value == 0 or abs(value) >= 0.01 else ".2e")


def side_by_side(runs: list[tuple[str, dict]]) -> str:
    """The comparison table: one column per run."""
    lines_spec = [
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
    width = max(12, *(len(name) + 2 for name, _ in runs))
    out = [f"{'':<26}" + "".join(f"{name:>{width}}" for name, _ in runs), "-" * (26 + width * len(runs))]
    for label, get in lines_spec:
        out.append(f"{label:<26}" + "".join(f"{_fmt(get(r)):>{width}}" for _, r in runs))
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


def run_probe(task: str = "digits-mlp", acts=("relu", "gelu"), *, control: bool = True, steps: int | None = None,
              lr: float | None = None, seed: int = 0, draws: int = 8, lengths=None, every: int = 25,
              json_path=None, plot_path=None, out=print) -> list[tuple[str, dict]]:
    """Run ``alice probe`` and print its tables; returns ``[(column name, run), ...]``."""
    from ..harness.tasks import TASKS as tasks  # the comparison harness's real-data tasks
    from .probe import DEFAULT_LENGTHS

    if task not in tasks:
        raise ValueError(f"Invalid task: {task!r} (valid: {', '.join(tasks)})")
    lengths = tuple(lengths or DEFAULT_LENGTHS)
    plan = [(tasks[task], act, act if tasks[task].has_act else "smooth") for act in
            (acts if tasks[task].has_act else acts[:1])]
    if control and task != CONTROL and CONTROL in tasks:
        plan.append((tasks[CONTROL], acts[0], f"{CONTROL} (control)"))
    runs = []
    with _single_thread():
        for t, act, column in plan:
            run = train_and_probe(t, act, steps=steps or t.steps, lr=lr or PROBE_LR, seed=seed,
                                  draws=draws, lengths=lengths, every=every)
            run["task"], run["lr"], run["steps"] = t.name, lr or PROBE_LR, steps or t.steps
            runs.append((column, run))
    first = runs[0][1]
    out(f"alice probe: task {task} ({tasks[task].summary}), {first['steps']} Alice steps at lr {first['lr']:g}, "
        f"seed {seed}; statistics of Alice's last step; probe on a fixed batch of up to {HELD_EXAMPLES} "
        "training examples")
    out("")
    out(side_by_side(runs))
    out("")
    for name, run in runs:
        out(f"[{name}] probe per layer (errors in units of D, the linear decrease promised at length 1)")
        out(run["report"].table())
        out("")
    for name, run in runs:
        out(verdict(name, run))
    if json_path is not None:
        payload = [{"column": name, "task": r["task"], "act": r["act"], "lr": r["lr"], "steps": r["steps"],
                    "val_loss": r["val_loss"], "val_acc": r["val_acc"], "stats": r["stats"],
                    "probe": r["report"].to_dict(prefix=""), "history": r["history"]} for name, r in runs]
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=1, allow_nan=True))
    if plot_path is not None:
        from .plots import plot

        for name, run in runs:
            path = Path(plot_path)
            target = path.with_name(f"{path.stem}-{name.split()[0]}{path.suffix or '.png'}")
            plot(run["history"], probe=run["report"], path=target, title=f"{run['task']} / {name}")
            out(f"plot written to {target}")
    return runs


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``probe`` subcommand to ``alice``'s subparsers (sets ``handler``)."""
    parser = subparsers.add_parser(
        "probe", help="which curvature (Hessian, glass, or neither) governs a model: ReLU vs GELU",
        description="Train a small task with Alice for each activation, then print Alice's step statistics "
        "and the model-fit probe (linear, + Hessian, + glass) side by side, with a smooth control.",
    )
    parser.add_argument("--task", default="digits-mlp",
                        help="task name (default digits-mlp; logreg is the smooth control)")
    parser.add_argument("--act", nargs="+", default=["relu", "gelu"], choices=["relu", "gelu"],
                        help="activations to compare (default: relu gelu)")
    parser.add_argument("--steps", type=positive_int, default=None, help="Alice steps (default: the task's)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help=f"Alice lr, the perturbation length sigma (default {PROBE_LR:g} for every column)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the batches and the probe")
    parser.add_argument("--draws", type=positive_int, default=8, help="Rademacher draws of the probe (default 8)")
    parser.add_argument("--lengths", type=positive_float, nargs="+", default=None,
                        help="multiples of Alice's step to probe at (default 0.25 0.5 1 2)")
    parser.add_argument("--every", type=positive_int, default=25, help="steps between two statistics readings")
    parser.add_argument("--no-control", dest="control", action="store_false",
                        help="leave out the logistic-regression control column")
    parser.add_argument("--json", default=None, help="write every number to this JSON file")
    parser.add_argument("--plot", default=None, help="write heatmaps and the probe table to PATH-<act>.png")
    parser.set_defaults(handler=_handle)
    return parser


def _handle(args: argparse.Namespace) -> int:
    run_probe(args.task, tuple(args.act), control=args.control, steps=args.steps, lr=args.lr, seed=args.seed,
              draws=args.draws, lengths=args.lengths, every=args.every, json_path=args.json, plot_path=args.plot)
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
