"""The report of a comparison, recomputed from ``results.jsonl`` alone.

One document model (a list of blocks) is rendered twice: ``report.md`` and a
self-contained ``report.html`` with the figures embedded as base64 PNG, so the HTML
can be mailed or archived as one file; ``summary.json`` holds the headline numbers for
users' own plots and checks. All are written atomically.

The verdicts follow the rules of :mod:`.stats`: per-seed paired differences against
the reference, Holm-corrected over one task's table, failures counted apart.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import statistics
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import plots, records, stats
from .tasks import TASKS

TITLE = "alice compare: results"
SUMMARY = "summary.json"
FEW = 3  # with this many seeds or fewer, tables list the per-seed values instead of an interval
CURVATURE_KEYS = ("clip_high", "glass_fraction", "step_ratio_adam")
CURVATURE_AT = (0.1, 0.5, 1.0)  # shares of a run where the curvature table reads the diagnostics
VERDICT_WORDS = {"win": "better (win)", "loss": "worse (loss)", "tie": "no difference detected at 95% (tie)",
                 "mixed": "mixed (the test and the failures disagree)", "n/a": "not tested (fewer than 2 paired seeds)"}


@dataclass
class Entry:
    """One optimizer of one task: its sweep runs by lr, its final runs, the chosen lr."""

    sweep: dict[float, list[list[dict]]] = field(default_factory=lambda: defaultdict(list))
    final: list[list[dict]] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return self.final[0][0]["lr"]

    def ok(self) -> list[list[dict]]:
        return [run for run in self.final if not stats.failed(run)]

    def values(self, metric: str) -> dict[int, float | None]:
        """Seed -> the final value of ``metric``; None for a failed run."""
        return {run[0]["seed"]: None if stats.failed(run) else stats.final(run, metric) for run in self.final}


@dataclass
class Cell:
    """One task under one budget: every optimizer's entry, the reference, the comparisons."""

    label: str
    budget: str
    batch_size: int
    entries: dict[str, Entry]
    reference: str
    target: float | None = None

    @property
    def task(self):
        return TASKS[self.label.split("/")[0]]

    @property
    def metric(self) -> str:
        return self.task.target.metric  # the headline: val_acc, or val_loss for language models

    @property
    def higher(self) -> bool:
        return self.task.target.higher_is_better

    @property
    def test_metric(self) -> str:
        return self.metric.replace("val_", "test_")

    def bounds(self, metric: str) -> tuple[float, float]:
        return (0.0, 1.0) if metric.endswith("acc") else (0.0, math.inf)

    def comparisons(self, metric: str) -> dict[str, stats.Paired]:
        """Optimizer -> its paired difference with the reference on ``metric`` (Holm over the table)."""
        if self.reference not in self.entries:
            return {}
        ref = self.entries[self.reference].values(metric)
        found = {name: stats.paired(e.values(metric), ref) for name, e in self.entries.items()
                 if name != self.reference}
        stats.verdicts(list(found.values()), self.higher)
        return found

    def time_target(self) -> tuple[float, str]:
        """The validation level for time to target, and where it comes from."""
        if self.target is not None:
            return self.target, "given"
        if self.reference in self.entries:
            values = [stats.final(run, self.metric) for run in self.entries[self.reference].ok()]
            if values:
                return statistics.median(values), f"the median final {self.metric} of {self.reference}"
        return self.task.target.value, "the task's default"


def cells(rows: list[dict]) -> list[Cell]:
    """The finished runs grouped by (task, budget, batch size), each optimizer's runs by phase."""
    grouped: dict = defaultdict(lambda: defaultdict(Entry))
    context: dict = {}
    for run in records.finished_runs(rows).values():
        head = run[0]
        key = head["task"], head.get("budget") or f"steps={head['steps']}", head["batch_size"]
        entry = grouped[key][head["optimizer"]]
        if head.get("phase", "final") == "sweep":
            entry.sweep[head["lr"]].append(run)
        else:
            entry.final.append(run)
        context[key] = run[0]  # the run's first row carries its context
    out = []
    for key, entries in sorted(grouped.items()):
        entries = {name: e for name, e in entries.items() if e.final}
        for e in entries.values():
            e.final.sort(key=lambda run: run[0]["seed"])
            for runs in e.sweep.values():
                runs.sort(key=lambda run: run[0]["seed"])
        if entries:
            head = context[key]
            out.append(Cell(*key, entries, head.get("reference", "adam"), head.get("target")))
    return out


# -- numbers as text ---------------------------------------------------------------------

def _num(value: float, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _show(values: list[float], bounds: tuple[float, float] = (-math.inf, math.inf), digits: int = 4) -> str:
    """Per-seed values when there are few, else the mean and its 95% interval clipped to ``bounds``."""
    if not values:
        return "—"
    if len(set(values)) == 1:
        return _num(values[0], digits) + (f" (all {len(values)})" if len(values) > 1 else "")
    if len(values) <= FEW:
        return ", ".join(_num(v, digits) for v in values)
    mean, low, high = stats.bounded(values, *bounds)
    return f"{_num(mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def _diff(c: stats.Paired, digits: int = 3) -> str:
    if c.n < 2:
        return f"{c.mean:+.{digits}g} (n = {c.n})" if math.isfinite(c.mean) else "—"
    return f"{c.mean:+.{digits}g} [{c.low:+.{digits}g}, {c.high:+.{digits}g}]"


def _ratio(e: Entry, ref: Entry, field_: str) -> float:
    mine = [stats.final(run, field_) for run in e.final]
    theirs = [stats.final(run, field_) for run in ref.final]
    return statistics.fmean(mine) / statistics.fmean(theirs) if theirs and statistics.fmean(theirs) > 0 else math.nan


def _interval_row(values: list[float], bounds) -> dict:
    mean, low, high = stats.bounded(values, *bounds) if values else (math.nan,) * 3
    return {k: (v if math.isfinite(v) else None) for k, v in dict(mean=mean, low=low, high=high).items()}


# -- summary.json ------------------------------------------------------------------------

def summary(found: list[Cell]) -> dict:
    """The headline numbers in the schema of ``summary.json`` (README, "alice compare": Outputs)."""
    tasks = {}
    counts = Counter(c.label for c in found)
    for cell in found:
        name = cell.label if counts[cell.label] == 1 else f"{cell.label} ({cell.budget})"
        versus = cell.comparisons(cell.test_metric)
        optimizers = {}
        for label, e in cell.entries.items():
            c = versus.get(label)
            optimizers[label] = {
                "lr": e.lr, "seeds": [run[0]["seed"] for run in e.final], "failures": len(e.final) - len(e.ok()),
                "val": _interval_row([stats.final(r, cell.metric) for r in e.ok()], cell.bounds(cell.metric)),
                "test": _interval_row([stats.final(r, cell.test_metric) for r in e.ok()], cell.bounds(cell.metric)),
                "vs_reference": None if c is None else {
                    k: (v if isinstance(v, str) or math.isfinite(v) else None)
                    for k, v in dict(mean=c.mean, low=c.low, high=c.high, p_holm=c.p_holm, verdict=c.verdict).items()},
            }
        tasks[name] = {"metric": cell.metric.split("_")[1], "reference": cell.reference, "optimizers": optimizers}
    return {"tasks": tasks}


# -- the report's blocks ----------------------------------------------------------------

def _conclusion(cell: Cell) -> list[tuple]:
    """Plain sentences: each optimizer's paired verdict against the reference and its cost."""
    versus = cell.comparisons(cell.test_metric)
    if not versus:
        return [("p", f"No comparison: the reference {cell.reference} did not run on this task.")]
    ref = cell.entries[cell.reference]
    items = []
    for name, c in versus.items():
        e = cell.entries[name]
        fails = f"; {c.failures} of {len(e.final)} seeds failed" if c.failures else ""
        test = (f"{cell.test_metric.replace('_', ' ')} {_diff(c)} (optimizer minus reference, 95% interval, "
                f"Holm p = {_num(c.p_holm, 2)}, {c.n} paired seeds{fails})")
        items.append(f"**{name}** against {cell.reference}: {VERDICT_WORDS[c.verdict]}; {test}; at "
                     f"{_ratio(e, ref, 'grad_evals'):.2f}x its gradient evaluations and "
                     f"{_ratio(e, ref, 'seconds'):.2f}x its optimizer seconds per run.")
    if ref.final and len(ref.ok()) < len(ref.final):
        items.append(f"The reference {cell.reference} failed on {len(ref.final) - len(ref.ok())} of "
                     f"{len(ref.final)} seeds.")
    return [("list", items)]


def _paired_rows(cell: Cell) -> list[list[str]]:
    rows = []
    for metric in (cell.test_metric, cell.metric):
        for name, c in cell.comparisons(metric).items():
            rows.append([name, metric, _diff(c, 3), _num(c.p, 2), _num(c.p_holm, 2), f"**{c.verdict}**",
                         f"{c.failures} / {c.reference_failures}"])
    return rows


def _final_rows(cell: Cell) -> list[list[str]]:
    rows = []
    for name, e in cell.entries.items():
        ok = e.ok()
        tail = []  # mean train loss over the last 10% of steps
        for run in ok:
            losses = [v for v in stats.per_step([run], "train_loss")[0] if v is not None]
            tail.append(statistics.fmean(losses[-max(1, len(losses) // 10):]))
        value = lambda m: _show([stats.final(r, m) for r in ok], cell.bounds(m))  # noqa: E731
        rows.append([name, _num(e.lr, 3), f"{len(e.final) - len(ok)} / {len(e.final)}",
                     value("test_acc"), value("test_loss"), value("val_acc"), value("val_loss"),
                     _show(tail, (0.0, math.inf)), _show([stats.final(r, "step") for r in ok], (0, math.inf), 5),
                     _show([stats.final(r, "grad_evals") for r in ok], (0, math.inf), 5),
                     _show([stats.final(r, "seconds") for r in ok], (0, math.inf), 3)])
    return rows


def _ttt_rows(cell: Cell, target: float) -> list[list[str]]:
    rows = []
    for name, e in cell.entries.items():
        hit = [t for t in (stats.time_to_target(run, cell.metric, target, cell.higher) for run in e.ok()) if t]
        rows.append([name, f"{len(hit)} / {len(e.final)}"]
                    + [_show([t[axis] for t in hit], (0.0, math.inf), 4) for axis in stats.AXES])
    return rows


def _sweep_blocks(cell: Cell, out: Path, safe: str) -> list[tuple]:
    swept = {name: e for name, e in cell.entries.items() if e.sweep}
    if not swept:
        return [("p", "Learning rates: no sweep; each optimizer ran the task's documented default.")]
    rows, notes = [], []
    other = "val_acc" if cell.metric == "val_loss" else "val_loss"
    for name, e in swept.items():
        grid = sorted(e.sweep)
        for lr in grid:
            runs = e.sweep[lr]
            ok = [r for r in runs if not stats.failed(r)]
            mark = ""
            if lr == e.lr:
                mark = "chosen" + (", **at the grid's edge**: the best lr may lie beyond" if lr in (grid[0], grid[-1])
                                   else "")
            rows.append([name, _num(lr, 3), f"{len(runs) - len(ok)} / {len(runs)}",
                         _show([stats.final(r, cell.metric) for r in ok], cell.bounds(cell.metric)),
                         _show([stats.final(r, other) for r in ok], cell.bounds(other)), mark])
        if e.lr in (grid[0], grid[-1]):
            notes.append(name)
    seeds = sorted({r[0]["seed"] for e in swept.values() for runs in e.sweep.values() for r in runs})
    png = plots.lr_figure({n: e.sweep for n, e in swept.items()}, {n: e.lr for n, e in swept.items()},
                          cell.metric, cell.bounds(cell.metric), f"{cell.label}", out / f"fig-{safe}-lr.png")
    blocks = [("h3", "Learning-rate selection and sensitivity"),
              ("p", f"Each optimizer's lr was chosen on the final {cell.metric} (mean over the selection seeds "
                    f"{', '.join(map(str, seeds))}; an lr with a failed seed is not chosen; accuracy ties go to the "
                    f"lower validation loss). A choice at an end of the grid extended the grid one step beyond, a "
                    f"bounded number of times. Final runs use other seeds."),
              ("table", ["optimizer", "lr", "failed / seeds", f"final {cell.metric}", f"final {other}", ""], rows),
              ("figure", png, f"{cell.label}: final {cell.metric} against the learning rate (selection seeds: "
                              "dots per seed, line through the mean; the ring marks the chosen lr)")]
    if notes:
        blocks.append(("p", f"Still at the grid's edge after the extensions: {', '.join(notes)}."))
    return blocks


def _at(run: list[dict], share: float) -> dict | None:
    """The first evaluation row with diagnostics at or after ``share`` of the run."""
    rows = [r for r in run if r.get("diagnostics")]
    want = share * run[-1]["step"]
    return next((r for r in rows if r["step"] >= want), rows[-1] if rows else None)


def _curvature_blocks(cell: Cell) -> list[tuple]:
    measured = {name: e for name, e in cell.entries.items() if any(r.get("diagnostics") for r in e.final[0])}
    if not measured:
        return []
    rows, sentences = [], []
    for name, e in measured.items():
        cells_ = [name]
        end = {}
        for key in CURVATURE_KEYS:
            parts = []
            for share in CURVATURE_AT:
                values = [v for v in ((_at(run, share) or {}).get("diagnostics", {}).get(key) for run in e.ok())
                          if v is not None]
                mean = statistics.fmean(values) if values else math.nan
                parts.append(_num(mean, 2))
                end[key] = mean
            cells_.append(" / ".join(parts))
        probes = [r["probe"] for run in e.ok() for r in run if r.get("probe")]
        best = Counter(p["best"] for p in probes)
        errs = {m: statistics.fmean([p[f"err_{m}"] for p in probes if p.get(f"err_{m}") is not None] or [math.nan])
                for m in ("linear", "hessian", "glass")}
        cells_ += [", ".join(f"{m} {k}" for m, k in best.most_common()) or "—",
                   " / ".join(_num(errs[m], 2) for m in ("linear", "hessian", "glass"))]
        rows.append(cells_)
        high, glass = end["clip_high"], end["glass_fraction"]
        if math.isfinite(high):
            who = ("the upper step bound, not the curvature model, sets most steps" if high > 0.5 else
                   "the curvature model sets most steps (the bound binds on few elements)" if high < 0.1 else
                   "the bound and the curvature model share the steps")
            kind = ("the glass term makes most of the curvature" if glass > 0.5 else
                    "the Hessian term makes most of the curvature") if math.isfinite(glass) else ""
            fit = f"; the probe's best-fitting model: {best.most_common(1)[0][0]}" if best else ""
            sentences.append(f"**{name}**: at the end {high:.0%} of elements hit the upper bound, so {who}; "
                             f"{kind}{fit}.")
    shares = " / ".join(f"{s:.0%}" for s in CURVATURE_AT)
    return [("h3", "Curvature: what sets Alice's step"),
            ("p", f"From opt.diagnostics() at {shares} of each final run (mean over seeds that did not fail): "
                  "clip_high = share of elements whose step hit the upper bound; glass_fraction = share of the "
                  "optimal curvature made by the glass term; step_ratio_adam = |Alice step| / |Adam-style step|. "
                  "Probe: the model of the expected loss (linear, +Hessian, +glass) that best predicts a step, "
                  "counted over the probe points, and each model's error in units of the linear decrease."),
            ("table", ["optimizer", f"clip_high ({shares})", f"glass_fraction ({shares})",
                       f"step_ratio_adam ({shares})", "probe: best model (count)", "probe error lin / +H / +H+G"],
             rows),
            ("list", sentences)]


def _cell_blocks(cell: Cell, out: Path) -> list[tuple]:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{cell.label}-{cell.budget}")
    heads = [e.final[0][0] for e in cell.entries.values()]
    seeds = sorted({len(e.final) for e in cell.entries.values()})
    target, origin = cell.time_target()
    steps = ", ".join(sorted({f"{h['steps']} ({h['optimizer']})" for h in heads})) \
        if cell.budget.startswith("evals") else str(heads[0]["steps"])
    blocks = [
        ("h2", f"{cell.label}: {cell.task.summary}"),
        ("p", f"Budget {cell.budget}: steps {steps} of batch {cell.batch_size}; validation every "
              f"{', '.join(sorted({str(h['eval_every']) for h in heads}))} steps; final seeds per optimizer: "
              f"{', '.join(map(str, seeds))}. Reference: {cell.reference}. Headline: {cell.test_metric} at the end "
              f"of the final runs (selection on {cell.metric}). Data: {heads[0].get('data', 'see README')}."),
        ("h3", "Conclusion"),
        *_conclusion(cell),
        ("h3", f"Paired differences against {cell.reference}"),
        ("p", "Per seed, optimizer minus reference, over the seeds where neither failed: mean [95% t-interval]; "
              f"p: two-sided paired t-test; Holm: corrected over the rows of one metric; verdict from the "
              f"corrected p < {stats.ALPHA} (failures decide where the test does not)."),
        ("table", ["optimizer", "metric", "difference [95% CI]", "p", "p (Holm)", "verdict",
                   "failed seeds (optimizer / reference)"], _paired_rows(cell)),
        ("h3", "Final metrics"),
        ("p", f"Over the final seeds that did not fail: mean [95% t-interval, clipped to the metric's range], or "
              f"the per-seed values with {FEW} seeds or fewer. Test: read once, at the last step. Train loss: the "
              f"mean over the last 10% of steps. Seconds: optimizer steps only, on a shared machine."),
        ("table", ["optimizer", "lr", "failed / seeds", "test acc", "test loss", "val acc", "val loss",
                   "train loss, last 10% of steps", "steps", "gradient evaluations", "optimizer seconds"],
         _final_rows(cell)),
    ]
    png, window = plots.figure({n: e.ok() or e.final for n, e in cell.entries.items()}, cell.metric,
                               cell.bounds(cell.metric), cell.label, out / f"fig-{safe}.png")
    blocks += [("figure", png, f"{cell.label}: train loss (top; moving average over {window} steps, geometric "
                               f"mean over seeds) and {cell.metric} (bottom) against steps, gradient evaluations and "
                               "optimizer seconds; bands: 95% t-interval over seeds, clipped to the metric's range"),
               ("h3", f"Time to target: {cell.metric} {'>=' if cell.higher else '<='} {_num(target)} ({origin})"),
               ("p", "Steps, gradient evaluations and optimizer seconds at the first evaluation that meets the "
                     "target, over the seeds that reached it (per-seed values when few)."),
               ("table", ["optimizer", "seeds that reached it", "steps", "gradient evaluations", "optimizer seconds"],
                _ttt_rows(cell, target))]
    return blocks + _sweep_blocks(cell, out, safe) + _curvature_blocks(cell)


def _summary_rows(found: list[Cell]) -> list[list[str]]:
    rows = []
    for cell in found:
        for name, c in cell.comparisons(cell.test_metric).items():
            e, ref = cell.entries[name], cell.entries[cell.reference]
            rows.append([f"{cell.label} ({cell.budget})", f"{name} vs {cell.reference}", cell.test_metric, _diff(c),
                         _num(c.p_holm, 2), f"**{c.verdict}**", f"{c.failures} / {len(e.final)}",
                         f"{_ratio(e, ref, 'grad_evals'):.2f} / {_ratio(e, ref, 'seconds'):.2f}"])
    return rows


def build(rows: list[dict], out: Path) -> list[tuple]:
    """The report's blocks for every task found in ``rows``."""
    finished = records.finished_runs(rows)
    heads = [run[0] for run in finished.values()]
    devices = sorted({h.get("device", "?") for h in heads})
    versions = sorted({", ".join(f"{k} {v}" for k, v in h.get("versions", {}).items()) for h in heads})
    commands = sorted({h.get("command", "") for h in heads} - {""})
    found = cells(rows)
    blocks = [
        ("h1", TITLE),
        ("p", f"Written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from {records.RESULTS} "
              f"({len(finished)} finished runs); the headline numbers are also in {SUMMARY}."),
        ("list", [f"Hardware: {'; '.join(devices)}", f"Versions: {'; '.join(versions)}"]),
        ("p", "Method: every optimizer trains the same model from the same initialisation on the same "
              "mini-batches (both set by the seed), so each is compared with the reference seed by seed (paired). "
              "Gradient evaluations count forward+backward passes: a sampling step of Alice costs three, each "
              "Hessian-vector product of AdaHessian or Sophia one more. Seconds are the optimizer steps' wall time "
              "(closures included, evaluation excluded), runs interleaved on one machine. A run fails when a train "
              f"or validation loss is not finite or a validation loss exceeds {stats.DIVERGENCE:g}x its initial one; "
              "failures are counted and left out of means. Intervals: 95% Student t over seeds; verdicts: paired "
              f"t-test, Holm-corrected per task, at {stats.ALPHA}."),
    ]
    if commands:
        blocks += [("p", "Commands:"), ("code", "\n".join(commands))]
    blocks += [("h2", "Summary: each optimizer against the reference"),
               ("p", "Test metric at the end of the final runs, optimizer minus reference per seed: mean [95% "
                     "interval]; cost: gradient evaluations / optimizer seconds per run relative to the reference."),
               ("table", ["task (budget)", "comparison", "metric", "difference [95% CI]", "p (Holm)", "verdict",
                          "failed seeds", "cost ratio (evals / seconds)"], _summary_rows(found))]
    for cell in found:
        blocks += _cell_blocks(cell, out)
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
    """Recompute ``report.md``, ``report.html``, ``summary.json`` and the figures from ``out/results.jsonl``."""
    out = Path(out)
    rows = records.read_rows(out / records.RESULTS)
    if not records.finished_runs(rows):
        raise ValueError(f"{out / records.RESULTS}: no finished runs to report")
    blocks = build(rows, out)
    write_atomic(out / SUMMARY, json.dumps(summary(cells(rows)), indent=1, allow_nan=False) + "\n")
    write_atomic(out / "report.md", to_markdown(blocks, out))
    write_atomic(out / "report.html", to_html(blocks))
    return out / "report.md"
