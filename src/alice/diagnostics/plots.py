"""Figures of the diagnostics (matplotlib, an optional extra: imported when called).

:func:`plot` draws, from a history of ``diagnostics(per_param=True)`` readings,
one layers x time heatmap per statistic (glass fraction, clip fractions), and
from a :class:`~alice.diagnostics.ProbeReport` its table and the measured change
of the expected loss against the three models' predictions. :func:`plot_curvature`
draws the readings of a :class:`~alice.diagnostics.CurvatureMonitor` over training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["HEATMAP_KEYS", "plot", "plot_curvature"]

HEATMAP_KEYS = ("glass_fraction", "clip_low", "clip_high")


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "alice.diagnostics.plot needs matplotlib: pip install 'alice-optimizer[diagnostics]'"
        ) from error
    return Figure


def _finish(fig, path, title):
    """Title ``fig``, save it to ``path`` (if given) and return it."""
    if title:
        fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _layers(history: Sequence[Mapping[str, float]], key: str) -> list[str]:
    names: list[str] = []
    for reading in history:
        for k in reading:
            if "/" in k and k.rsplit("/", 1)[1] == key and k.rsplit("/", 1)[0] not in names:
                names.append(k.rsplit("/", 1)[0])
    return names


def plot(history: Sequence[Mapping[str, float]] | None = None, probe=None, *,
         keys: Sequence[str] = HEATMAP_KEYS, path: str | Path | None = None, title: str | None = None):
    """A matplotlib ``Figure`` of the statistics over training and/or a probe report.

    Args:
        history: readings of ``diagnostics(opt, per_param=True)`` in training order; a
            ``"step"`` entry in each, if present, labels the time axis.
        probe: a :class:`~alice.diagnostics.ProbeReport`: its table, and the measured
            change against each model for the overall row.
        keys: the per-tensor statistics drawn as heatmaps (values in [0, 1]).
        path: where to save the figure (the format follows the suffix).
        title: the figure's title.
    """
    if history is None and probe is None:
        raise ValueError("Invalid history: None (give history, probe, or both)")
    history = list(history or [])
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ValueError(f"Invalid keys: {keys!r} (must be names of per-tensor statistics)")
    Figure = _matplotlib()
    ratios = [1.0] * (len(keys) if history else 0)
    if probe is not None:
        ratios += [1.2, 0.25 + 0.12 * len(probe.rows)]
    fig = Figure(figsize=(6.5, 2.6 * sum(ratios) + 0.4), layout="constrained")
    axes = fig.subplots(len(ratios), 1, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    k = 0
    if history:
        steps = [r.get("step", i + 1) for i, r in enumerate(history)]
        for key in keys:
            ax = axes[k]
            k += 1
            names = _layers(history, key)
            if not names:
                raise ValueError(f"Invalid history: no '<name>/{key}' entries (read diagnostics(per_param=True))")
            grid = [[float(r.get(f"{n}/{key}", math.nan)) for r in history] for n in names]
            image = ax.imshow(grid, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0, cmap="viridis")
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ticks = sorted({0, len(steps) - 1, *range(0, len(steps), max(1, len(steps) // 6))})
            ax.set_xticks(ticks, [f"{steps[i]:g}" for i in ticks], fontsize=8)
            ax.set_xlabel("step")
            ax.set_title(key, fontsize=10)
            fig.colorbar(image, ax=ax, fraction=0.04)
    if probe is not None:
        ax = axes[k]
        row = probe.rows[0]
        d = row.decrease if row.decrease > 0 else 1.0
        ax.errorbar(probe.lengths, [m / d for m in row.measured], yerr=[2 * s / d for s in row.stderr],
                    fmt="ko", label="measured (2 s.e.)")
        for model, style in zip(("linear", "hessian", "glass"), ("--", "-.", "-")):
            ax.plot(probe.lengths, [p / d for p in row.predicted[model]], style, label=model)
        ax.axhline(0.0, color="0.7", lw=0.8)
        ax.set_xlabel("length (x Alice's step)")
        ax.set_ylabel("change of E[L] / D")
        ax.set_title(f"probe: {row.name}", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[k + 1]
        ax.axis("off")
        cells = [[r.name, f"{r.err['linear']:.3f}", f"{r.err['hessian']:.3f}", f"{r.err['glass']:.3f}",
                  f"{r.r2['glass']:.2f}", f"{r.noise:.3f}", r.best] for r in probe.rows]
        table = ax.table(cellText=cells, colLabels=["layer", "err lin", "err +H", "err +H+G", "R2 +H+G", "noise",
                                                    "best"], loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        ax.set_title("probe table (errors in units of D)", fontsize=10)
    return _finish(fig, path, title)


def _records(records) -> list[Mapping]:
    """A list of monitor records, or the records of a JSON-lines file (a path)."""
    if isinstance(records, (str, Path)):
        import json

        lines = Path(records).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    return list(records)


def plot_curvature(records, *, path: str | Path | None = None, title: str | None = None):
    """A matplotlib ``Figure`` of :class:`~alice.diagnostics.CurvatureMonitor` readings over training.

    Top: the glass fraction with its 95% interval (a band), overall (black) and per
    layer where the readings have layers. Bottom, where the readings fitted the
    models (cost ``"business"``/``"full"``): the RMS error of the linear, +Hessian and
    +glass models in units of ``|D|`` (the linear change along the direction), log scale.

    Args:
        records: :attr:`CurvatureMonitor.records`, or the path of the monitor's JSON-lines log.
        path: where to save the figure (the format follows the suffix).
        title: the figure's title.
    """
    records = _records(records)
    if not records:
        raise ValueError("Invalid records: empty (take at least one reading)")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or "glass_fraction" not in r or "step" not in r:
            raise ValueError(f"Invalid records[{i}]: not a CurvatureMonitor record (no 'step' and 'glass_fraction')")
    Figure = _matplotlib()
    fitted = any(r.get("fit") for r in records)
    fig = Figure(figsize=(6.5, 3.0 * (1 + fitted) + 0.4), layout="constrained")
    axes = fig.subplots(1 + fitted, 1, squeeze=False)[:, 0]
    steps = [r["step"] for r in records]
    rows = [("all", records, "k")]
    names = []
    for r in records:
        names += [n for n in r.get("layers", {}) if n not in names]
    colours = [f"C{i % 10}" for i in range(len(names))]
    rows += [(n, [r.get("layers", {}).get(n, {}) for r in records], c) for n, c in zip(names, colours)]
    ax = axes[0]
    for name, series, colour in rows:
        get = lambda key: [float(s.get(key, math.nan)) for s in series]  # noqa: E731
        ax.plot(steps, get("glass_fraction"), "o-", color=colour, ms=3, lw=2 if name == "all" else 1, label=name)
        ax.fill_between(steps, get("glass_fraction_low"), get("glass_fraction_high"), color=colour, alpha=0.15)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("glass fraction (95% interval)")
    ax.set_title("share of the expected-loss curvature due to the glass", fontsize=10)
    ax.legend(fontsize=8, ncol=min(4, len(rows)))
    if fitted:
        ax = axes[1]
        for model, style in zip(("linear", "hessian", "glass"), ("--", "-.", "-")):
            errors = [float(r["fit"][model]["error_rel"]) if r.get("fit") else math.nan for r in records]
            ax.plot(steps, errors, style, marker="o", ms=3, label=model)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("RMS error / |D|")
        ax.set_title("fit of the three models along the direction (all parameters)", fontsize=10)
        ax.legend(fontsize=8)
    return _finish(fig, path, title)
