"""The ``alice`` command line; parsing only, each subcommand imports its module lazily.

``alice compare`` runs a comparison, ``alice report`` rewrites a report from its results
file, ``alice tasks`` and ``alice optimizers`` list what can be compared, and
``alice demo`` is the README's small comparison (mnist-mlp, Alice vs Adam, 2 seeds).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._argtypes import positive_float, positive_int

DEMO = dict(task="mnist-mlp", optimizers=["alice", "adam"], seeds=2, out="runs/demo")


def _check_out(text: str) -> None:
    """``--out`` must be a directory or creatable as one: no existing file at it or above it."""
    path = Path(text)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            where = "is a file" if folder == path else f"is under the file {folder}"
            raise ValueError(f"Invalid --out: {text!r} {where} (give a directory)")


def _check_optimizers(specs: list[str]) -> None:
    """Build each ``--optimizer`` once on a throw-away parameter, so that its constructor judges
    the values (``betas=(2.0,0.9)``, an unclosed ``(0.9``) before any folder is made."""
    import torch

    from .harness import optimizers

    for text in specs:
        choice = optimizers.parse(text)
        for key, value in choice.kwargs.items():  # a bracket or quote that ``parse`` kept as text
            if isinstance(value, str) and value[:1] in "([{'\"":
                raise ValueError(f"Invalid --optimizer {text!r}: {key}={value} is not a Python literal")
        try:
            choice.build(torch.nn.Linear(1, 1), choice.lr or 1e-3, 0)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid --optimizer {text!r}: {error}") from None


def _compare(args: argparse.Namespace) -> int:
    from .harness.runner import Settings, compare

    _check_out(args.out)
    _check_optimizers(args.optimizers or ["alice", "adam"])

    settings = Settings(
        task=args.task, optimizers=tuple(args.optimizers or ("alice", "adam")), seeds=args.seeds,
        steps=args.steps, batch_size=args.batch_size, eval_every=args.eval_every, sweep=args.sweep,
        sweep_factor=args.sweep_factor, sweep_seeds=args.sweep_seeds, max_extend=args.max_extend,
        reference=args.reference, budget=args.budget, target=args.target, act=args.act, threads=args.threads,
        data=args.data,
        device=args.device, out=Path(args.out), progress=args.progress, command=args.command,
    )
    path = compare(settings)
    print(f"Report: {path} and {path.with_suffix('.html')} (results: {path.parent / 'results.jsonl'})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .harness.report import write_report

    path = write_report(Path(args.out))
    print(f"Report: {path} and {path.with_suffix('.html')}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .harness.tasks import TASKS

    for task in TASKS.values():
        lrs = ", ".join(f"{k} {v:g}" for k, v in task.lrs.items())
        print(f"{task.name:18} {task.summary}\n{'':18} target {task.target}; {task.steps} steps, "
              f"batch {task.batch_size}; default lr: {lrs}")
    return 0


def _optimizers(args: argparse.Namespace) -> int:
    from .harness.optimizers import OPTIMIZERS

    for name, spec in OPTIMIZERS.items():
        print(f"{name:22} {spec.summary}")
    print(f"{'module:Class':22} any torch.optim-style class, e.g. torch.optim:RMSprop,lr=1e-3,alpha=0.9")
    return 0


def _add_compare_arguments(p: argparse.ArgumentParser, defaults: dict) -> None:
    p.add_argument("--task", default=defaults.get("task", "digits-mlp"),
                   help="task to run (see `alice tasks`; default %(default)s)")
    p.add_argument("--optimizer", dest="optimizers", action="append", default=defaults.get("optimizers"),
                   metavar="SPEC", help="NAME[,key=value...] or module:Class[,key=value...]; repeat for "
                   "several (see `alice optimizers`; default: alice and adam)")
    p.add_argument("--seeds", type=positive_int, default=defaults.get("seeds", 3),
                   help="seeds per optimizer (default %(default)s)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps per run (default: the task's)")
    p.add_argument("--batch-size", type=positive_int, help="mini-batch size (default: the task's)")
    p.add_argument("--eval-every", type=positive_int, help="steps between evaluations (default: 2%% of a run)")
    p.add_argument("--budget", metavar="steps=N|evals=N",
                   help="steps per run, or gradient evaluations per run (each optimizer runs the steps they allow)")
    p.add_argument("--reference", default="adam",
                   help="optimizer the others are compared with, seed by seed (default %(default)s)")
    p.add_argument("--target", type=float, help="validation level for time to target (default: the "
                   "reference's median final value)")
    p.add_argument("--sweep", type=positive_int, default=1, nargs="?", const=5, metavar="K",
                   help="learning rates per optimizer, chosen on the validation headline metric "
                   "(default 1: no sweep; --sweep alone: 5)")
    p.add_argument("--sweep-factor", type=positive_float, default=2.0,
                   help="ratio between neighbouring lrs of the sweep (default %(default)s)")
    p.add_argument("--sweep-seeds", type=positive_int, default=2,
                   help="selection seeds each lr runs, apart from the final seeds (default %(default)s)")
    p.add_argument("--max-extend", type=int, default=2,
                   help="times a choice at the grid's edge may extend the grid on that side (default %(default)s)")
    p.add_argument("--act", default="relu", help="activation of hidden layers: relu or gelu (default relu)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: steady timings on small models and busy machines)")
    p.add_argument("--data", help="data file or directory (default: fetched once into the cache, "
                   "or $ALICE_DATA_DIR)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default=defaults.get("out", "runs/compare"),
                   help="output directory: results.jsonl, report.md, report.html, figures (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(handler=_compare)


class _Version(argparse.Action):
    """``--version``: the package's version, imported only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"alice {__version__}")
        parser.exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alice", description="Alice, the expected-loss curvature optimizer (arXiv 2411.16914).")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    compare = commands.add_parser(
        "compare", help="compare optimizers on a real task; writes results, plots and a report",
        description="Train a task with each optimizer over several seeds; record loss, gradient "
        "evaluations and time per step; write results.jsonl (resumable), figures, report.md and report.html.")
    _add_compare_arguments(compare, {})
    demo = commands.add_parser(
        "demo", help="the small comparison of the README: mnist-mlp, Alice vs Adam, 2 seeds",
        description="alice compare with the README's small settings; every option of compare applies.")
    _add_compare_arguments(demo, DEMO)
    report = commands.add_parser("report", help="rewrite the report of an output directory from its results")
    report.add_argument("--out", default="runs/compare", help="output directory (default %(default)s)")
    report.set_defaults(handler=_report)
    commands.add_parser("tasks", help="list the tasks").set_defaults(handler=_tasks)
    commands.add_parser("optimizers", help="list the optimizers").set_defaults(handler=_optimizers)
    from .diagnostics.cli import add_parser as add_probe  # its handler imports the probe lazily

    add_probe(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alice`` console script and of ``python -m alice``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    args.command = shlex.join(["alice", *argv])
    try:
        return args.handler(args)
    except (ValueError, OSError, ImportError) as error:
        parser.exit(2, f"alice: error: {error}\n")
    except KeyboardInterrupt:
        if args.handler is _compare:
            results = Path(args.out) / "results.jsonl"
            message = (f"alice: interrupted; finished runs are kept in {results}: "
                       "rerun the same command to resume")
        else:
            message = "alice: interrupted"
        print(message, file=sys.stderr)
        return 130
