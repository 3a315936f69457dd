"""Figures of a comparison: train loss and the validation target metric against steps,
gradient evaluations and seconds, side by side, so no axis is chosen for anyone.

Curves are the mean over seeds with a shaded 95% t-interval; losses are averaged in
log space (a geometric mean), so their bands stay positive on the log axis. Steps and gradient
evaluations are the same for every seed of an optimizer; on the seconds axis the
x position of a point is the mean over seeds of the time at which it was reached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .stats import AXES, t975, per_step


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("Plots need matplotlib: pip install 'alice-optimizer[compare]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds (rows) and the 95% t half-width (zero for one seed)."""
    mean = series.mean(0)
    if len(series) < 2:
        return mean, np.zeros_like(mean)
    return mean, t975(len(series) - 1) * series.std(0, ddof=1) / np.sqrt(len(series))


def _smooth(losses: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average per row (NaN where a diverged step is inside the window)."""
    kernel = np.ones(window) / window
    return np.stack([np.convolve(np.r_[np.full(window - 1, row[0]), row], kernel, "valid") for row in losses])


def figure(cell: dict[str, list[list[dict]]], target, title: str, path: Path) -> Path:
    """Draw one task's 2x3 figure for ``cell`` (optimizer -> runs) and save it as PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    limits: dict[int, list[float]] = {0: [], 1: []}  # y values that set the log panels' ranges
    for i, (name, runs) in enumerate(cell.items()):
        color = colors(i % 10)
        losses = np.array([[np.nan if v is None else v for v in s] for s in per_step(runs, "train_loss")])
        smooth = _smooth(losses, max(1, losses.shape[1] // 50))
        # A run that diverged, or seeds 10x apart at the end, would stretch a band over the whole
        # panel and hide everyone else: draw its mean only, and say so in the legend.
        ends = smooth[:, -1]
        unstable = not np.all(np.isfinite(ends)) or ends.max() > 10 * ends.min()
        label = f"{name} (n={len(runs)})" + (": seeds >10x apart, no band" if unstable else "")
        x_step = {"step": np.arange(1, losses.shape[1] + 1),
                  "grad_evals": np.mean(per_step(runs, "step_evals"), 0),
                  "seconds": np.mean(per_step(runs, "step_seconds"), 0)}
        metric = np.array([[np.nan if r[target.metric] is None else r[target.metric] for r in run] for run in runs])
        x_eval = {axis: np.mean([[r[axis] for r in run] for run in runs], 0) for axis in AXES}
        for col, axis in enumerate(AXES):
            for row, (x, series, log) in enumerate(((x_step[axis], smooth, True),
                                                     (x_eval[axis], metric, not target.higher_is_better))):
                mean, half = _band(np.log(series) if log else series)
                low, high = mean - half, mean + half
                if log:
                    mean, low, high = np.exp(mean), np.exp(low), np.exp(high)
                    if not unstable:
                        limits[row] += [mean[0], np.nanmin(mean)]
                ax = axes[row, col]
                ax.plot(x, mean, color=color, label=label, lw=1.6)
                if not unstable:
                    ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    for row, values in limits.items():
        finite = [v for v in values if np.isfinite(v) and v > 0]
        if finite:
            for col in range(3):
                axes[row, col].set_ylim(0.8 * min(finite), 1.5 * max(finite))
    for col, axis in enumerate(AXES):
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("train loss (moving average)")
        axes[1, col].set_ylabel(target.metric.replace("_", " "))
        axes[1, col].axhline(target.value, color="grey", ls="--", lw=1)
        for row in (0, 1):
            axes[row, col].set_xlabel(AXES[axis])
            axes[row, col].grid(alpha=0.3)
    for col in range(3):
        if target.higher_is_better:
            # Accuracies near the target decide the comparison; the first evaluations fall below.
            axes[1, col].set_ylim(max(0.0, target.value - 0.2), 1.005)
        else:
            axes[1, col].set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=10)
    fig.suptitle(f"{title}: mean over seeds, shaded 95% t-interval; dashed line: target {target}", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
