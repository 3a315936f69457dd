"""The report of a comparison, recomputed from ``results.jsonl`` alone.

One document model (a list of blocks) is rendered twice: ``report.md`` and a
self-contained ``report.html`` with the figures embedded as base64 PNG, so the HTML
can be mailed or archived as one file. Both are written atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import os
import statistics
import uuid
from collections import defaultdict
from pathlib import Path

from . import plots, records, stats
from .tasks import TASKS

TITLE = "alice compare: results"


def _fmt(mean: float, half: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "diverged"
    text = f"{mean:.{digits}g}"
    return f"{text} ± {half:.2g}" if math.isfinite(half) else text


def _interval(values: list[float], digits: int = 4) -> str:
    return _fmt(*stats.t_interval(values), digits)


def _cells(rows: list[dict]) -> dict[tuple, dict[str, dict[float, list[list[dict]]]]]:
    """(task, steps, batch size, eval interval) -> optimizer -> lr -> finished runs (seed order)."""
    cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in records.finished_runs(rows).values():
        head = run[0]
        key = head["task"], head["steps"], head["batch_size"], head["eval_every"]
        cells[key][head["optimizer"]][head["lr"]].append(run)
    for optimizers in cells.values():
        for by_lr in optimizers.values():
            for runs in by_lr.values():
                runs.sort(key=lambda run: run[0]["seed"])
    return cells


def _task(label: str):
    return TASKS[label.split("/")[0]]


def _chosen(by_lr: dict[float, list[list[dict]]]) -> tuple[float, list[list[dict]]]:
    """The lr to report: the only one, or the sweep's choice on validation."""
    if len(by_lr) == 1:
        return next(iter(by_lr.items()))
    lr = stats.choose_lr([run for runs in by_lr.values() for run in runs])
    return lr, by_lr[lr]


def _winner_rows(cell: dict[str, list[list[dict]]], target) -> list[list[str]]:
    """Who wins each axis: the test metric at an equal budget of that axis, and time to target."""
    test_metric = target.metric.replace("val_", "test_")
    higher = target.higher_is_better
    rows = []
    for axis, unit in stats.AXES.items():
        budget = min(statistics.fmean([run[-1][axis] for run in runs]) for runs in cell.values())
        samples = {name: [stats.at_budget(run, axis, budget)[test_metric] for run in runs]
                   for name, runs in cell.items()}
        best = stats.winners(samples, higher)
        rows.append([unit, f"{test_metric} at equal budget ({budget:.4g} {unit})", _names(best, len(cell))])
    for axis, unit in stats.AXES.items():
        reached = {name: [stats.time_to_target(run, target) for run in runs] for name, runs in cell.items()}
        samples = {name: [t[axis] for t in times] for name, times in reached.items() if all(times)}
        best = stats.winners(samples, higher_is_better=False)
        rows.append([unit, f"{unit} to reach {target} (all seeds)",
                     _names(best, len(cell)) if samples else "none reached on all seeds"])
    return rows


def _names(best: list[str], total: int) -> str:
    if not best:
        return "no finite result"
    if len(best) == 1:
        return f"**{best[0]}**"
    # winners() lists the tied by mean, best first.
    return ("tie: " if len(best) < total else "tie (all): ") + f"{best[0]} (best mean), " + ", ".join(best[1:])


def _cell(optimizers: dict) -> tuple[dict[str, list[list[dict]]], dict[str, float]]:
    """Optimizer -> the runs to report (the sweep's choice), and optimizer -> its lr."""
    cell, chosen = {}, {}
    for name, by_lr in optimizers.items():
        chosen[name], cell[name] = _chosen(by_lr)
    return cell, chosen


def _cell_blocks(key: tuple, optimizers: dict, out: Path) -> list[tuple]:
    label, steps, batch_size, eval_every = key
    task = _task(label)
    target = task.target
    cell, chosen = _cell(optimizers)
    heads = [runs[0][0] for runs in cell.values()]
    seeds = sorted({len(runs) for runs in cell.values()})
    blocks = [
        ("h2", f"{label}: {task.summary}"),
        ("p", f"{steps} steps of batch {batch_size}, evaluated every {eval_every} steps; "
              f"seeds per optimizer: {', '.join(map(str, seeds))}. Target: {target}. "
              f"Data: {heads[0].get('data', 'see README')}."),
        ("h3", "Who wins, per axis"),
        ("p", "An optimizer wins only if its 95% interval over seeds is clear of every other's; "
              "otherwise the optimizers that overlap the best tie. Equal budget: each run's last "
              "evaluation within the smallest total any optimizer used on that axis."),
        ("table", ["axis", "criterion", "winner"], _winner_rows(cell, target)),
    ]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{label}-{steps}")
    png = plots.figure(cell, target, label, out / f"fig-{safe}.png")
    blocks.append(("figure", png, f"{label}: train loss (top) and {target.metric} (bottom) against steps, "
                                  "gradient evaluations and optimizer seconds"))
    final_rows = []
    for name, runs in cell.items():
        metric = lambda m: [stats.final(run, m) for run in runs]  # noqa: E731
        last_losses = [statistics.fmean([v for v in run[-1]["train_loss"] if v is not None] or [math.nan])
                       for run in runs]
        final_rows.append([name, f"{chosen[name]:.3g}", str(len(runs)), _interval(last_losses),
                           _interval(metric("val_loss")), _interval(metric("val_acc")),
                           _interval(metric("test_loss")), _interval(metric("test_acc")),
                           _interval(metric("grad_evals"), 5), _interval(metric("seconds"), 3)])
    blocks += [("h3", "Final metrics (mean ± 95% t-interval over seeds)"),
               ("table", ["optimizer", "lr", "seeds", "train loss (last interval)", "val loss", "val acc",
                          "test loss", "test acc", "grad evals", "seconds"], final_rows)]
    ttt_rows = []
    for name, runs in cell.items():
        times = [stats.time_to_target(run, target) for run in runs]
        hit = [t for t in times if t]
        ttt_rows.append([name, f"{len(hit)}/{len(runs)}"] + [
            _interval([t[axis] for t in hit], 4) if hit else "—" for axis in stats.AXES])
    blocks += [("h3", f"Time to target ({target}), over the seeds that reached it"),
               ("table", ["optimizer", "reached", "steps", "grad evals", "seconds"], ttt_rows)]
    sweeps = {name: by_lr for name, by_lr in optimizers.items() if len(by_lr) > 1}
    if sweeps:
        sweep_rows = []
        for name, by_lr in sweeps.items():
            for lr, runs in sorted(by_lr.items()):
                losses, values = ([stats.final(run, m) for run in runs] for m in ("val_loss", target.metric))
                sweep_rows.append([name, f"{lr:.3g}", str(len(runs)), _interval(losses), _interval(values),
                                   _choice_note(lr, chosen[name], sorted(by_lr))])
        blocks += [("h3", "Learning-rate sweep (lowest final validation loss over the seeds every lr ran)"),
                   ("table", ["optimizer", "lr", "seeds", "final val_loss", f"final {target.metric}", ""], sweep_rows)]
    return blocks


def _choice_note(lr: float, chosen: float, grid: list[float]) -> str:
    """Mark the chosen lr, and warn when it sits at an end of the grid (the best may lie beyond)."""
    if lr != chosen:
        return ""
    return "chosen, at the grid's edge" if lr in (grid[0], grid[-1]) else "chosen"


def build(rows: list[dict], out: Path) -> list[tuple]:
    """The report's blocks for every task found in ``rows``."""
    finished = records.finished_runs(rows)
    heads = [run[-1] for run in finished.values()]
    devices = sorted({h.get("device", "?") for h in heads})
    versions = sorted({", ".join(f"{k} {v}" for k, v in h.get("versions", {}).items()) for h in heads})
    commands = sorted({h.get("command", "") for h in heads} - {""})
    blocks = [
        ("h1", TITLE),
        ("p", f"Written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from {records.RESULTS} "
              f"({len(finished)} finished runs)."),
        ("list", [f"Hardware: {'; '.join(devices)}", f"Versions: {'; '.join(versions)}"]),
        ("p", "Method: every optimizer trains the same model from the same initialisation on the same "
              "mini-batches (both set by the seed). Gradient evaluations count forward+backward passes: a "
              "sampling step of Alice costs three, and each Hessian-vector product of AdaHessian or Sophia one "
              "more. Seconds are the optimizer steps' wall time (closures included, evaluation excluded), with "
              "runs interleaved on one machine. Learning rates not chosen by a sweep are the task's documented "
              "defaults. Intervals: 95% Student t over seeds."),
    ]
    if commands:
        blocks += [("p", "Commands:"), ("code", "\n".join(commands))]
    cells = sorted(_cells(rows).items())
    summary = []
    for (label, steps, *_), optimizers in cells:
        target = _task(label).target
        winners = _winner_rows(_cell(optimizers)[0], target)
        summary.append([f"{label} ({steps} steps)"] + [w[2] for w in winners[:3]])
    blocks += [("h2", "Summary: who wins on each axis"),
               ("p", "Best test metric (accuracy; loss for charlm) at an equal budget of steps, gradient "
                     "evaluations and seconds; a tie when 95% intervals overlap. Details per task below."),
               ("table", ["task", "steps", "gradient evaluations", "seconds"], summary)]
    for key, optimizers in cells:
        blocks += _cell_blocks(key, optimizers, out)
    return blocks


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(blocks: list[tuple], out: Path) -> str:
    parts = []
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + args[0])
        elif kind == "p":
            parts.append(args[0])
        elif kind == "list":
            parts.append("\n".join(f"- {item}" for item in args[0]))
        elif kind == "code":
            parts.append(f"```\n{args[0]}\n```")
        elif kind == "table":
            parts.append(_md_table(*args))
        elif kind == "figure":
            parts.append(f"![{args[1]}]({os.path.relpath(args[0], out)})")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """HTML of a text with **bold** spans (the only markup the report uses)."""
    pieces = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(pieces))


STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.92em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #ddd}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto;white-space:pre-wrap}h2{border-bottom:2px solid #ddd;margin-top:2em}
figcaption{color:#555;font-size:0.9em}"""


def to_html(blocks: list[tuple]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{TITLE}</title><style>{STYLE}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline(args[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(args[0])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "code":
            parts.append(f"<pre>{html.escape(args[0])}</pre>")
        elif kind == "table":
            header, rows = args
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(Path(args[0]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(args[1])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{_inline(args[1])}</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same directory, so readers never see half a report."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(out: Path) -> Path:
    """Recompute ``report.md``, ``report.html`` and the figures from ``out/results.jsonl``."""
    out = Path(out)
    rows = records.read_rows(out / records.RESULTS)
    if not records.finished_runs(rows):
        raise ValueError(f"{out / records.RESULTS}: no finished runs to report")
    blocks = build(rows, out)
    write_atomic(out / "report.md", to_markdown(blocks, out))
    write_atomic(out / "report.html", to_html(blocks))
    return out / "report.md"
