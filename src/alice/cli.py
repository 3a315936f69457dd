"""The ``alice`` command line: ``alice demo [--epochs N] [--seeds K] [--out PATH] [--no-progress]``."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    """Run the Alice vs Adam comparison on digits."""
    from .demo import run_demo

    run_demo(epochs=args.epochs, seeds=args.seeds, out=args.out, progress=args.progress)
    print(f"Report written to {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The parser of ``alice`` and its subcommands."""
    from .demo import DEFAULT_EPOCHS, DEFAULT_OUT, DEFAULT_SEEDS

    parser = argparse.ArgumentParser(
        prog="alice", description="Alice, the expected-loss curvature optimizer (arXiv 2411.16914)."
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="compare Alice and Adam on scikit-learn's digits (CPU, seconds)",
        description="Train a small MLP on scikit-learn's digits with Alice and Adam over a few "
        "seeds, print a comparison table and write it as Markdown.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                      help=f"epochs per run (default {DEFAULT_EPOCHS})")
    demo.add_argument("--seeds", type=_positive_int, default=DEFAULT_SEEDS,
                      help=f"seeds per optimizer (default {DEFAULT_SEEDS})")
    demo.add_argument("--out", default=str(DEFAULT_OUT), help=f"Markdown report path (default {DEFAULT_OUT})")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``alice`` console script and of ``python -m alice``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    return args.handler(args)
