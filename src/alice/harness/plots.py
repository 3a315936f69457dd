"""Figures of a comparison: train loss and the validation target metric against steps,
gradient evaluations and seconds, side by side, so no axis is chosen for anyone.

Curves are the mean over seeds with a shaded 95% t-interval, clipped to the metric's
range; losses are averaged in log space (a geometric mean), so their bands stay positive
on the log axis, whose range covers the bands. Steps and gradient
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


def figure(cell: dict[str, list[list[dict]]], metric: str, bounds: tuple[float, float], title: str,
           path: Path) -> tuple[Path, int]:
    """Draw one task's 2x3 figure for ``cell`` (optimizer -> runs) and save it as PNG; returns the
    path and the moving-average window of the train loss (steps)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    limits: dict[int, list[float]] = {0: [], 1: []}  # y values that set the log panels' ranges
    higher = metric.endswith("acc")
    window = 1
    for i, (name, runs) in enumerate(cell.items()):
        color = colors(i % 10)
        losses = np.array([[np.nan if v is None else v for v in s] for s in per_step(runs, "train_loss")])
        window = max(1, losses.shape[1] // 50)
        smooth = _smooth(losses, window)
        # Seeds 10x apart at the end would stretch a band over the whole panel and hide everyone
        # else: draw the mean only, and say so in the legend.
        ends = smooth[:, -1]
        unstable = not np.all(np.isfinite(ends)) or ends.max() > 10 * ends.min()
        label = f"{name} (n={len(runs)})" + (": seeds >10x apart, no band" if unstable else "")
        x_step = {"step": np.arange(1, losses.shape[1] + 1),
                  "grad_evals": np.mean(per_step(runs, "step_evals"), 0),
                  "seconds": np.mean(per_step(runs, "step_seconds"), 0)}
        values = np.array([[np.nan if r[metric] is None else r[metric] for r in run] for run in runs])
        x_eval = {axis: np.mean([[r[axis] for r in run] for run in runs], 0) for axis in AXES}
        for col, axis in enumerate(AXES):
            for row, (x, series, log) in enumerate(((x_step[axis], smooth, True),
                                                     (x_eval[axis], values, not higher))):
                mean, half = _band(np.log(series) if log else series)
                low, high = mean - half, mean + half
                if log:
                    mean, low, high = np.exp(mean), np.exp(low), np.exp(high)
                    if not unstable:
                        limits[row] += [np.nanmin(low), np.nanmax(high[len(high) // 20:])]
                low, high = np.clip(low, *bounds), np.clip(high, *bounds)  # bands stay in the metric's range
                ax = axes[row, col]
                ax.plot(x, mean, color=color, label=label, lw=1.6)
                if not unstable:
                    ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    for row, values in limits.items():
        finite = [v for v in values if np.isfinite(v) and v > 0]
        if finite:
            for col in range(3):
                axes[row, col].set_ylim(0.9 * min(finite), 1.1 * max(finite))
    for col, axis in enumerate(AXES):
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel(f"train loss (moving average, {window} steps)")
        axes[1, col].set_ylabel(metric.replace("_", " "))
        for row in (0, 1):
            axes[row, col].set_xlabel(AXES[axis])
            axes[row, col].grid(alpha=0.3)
        if higher:
            top = np.nanmax([np.nanmax([r[metric] for r in run if r[metric] is not None] or [np.nan])
                             for runs in cell.values() for run in runs])
            axes[1, col].set_ylim(max(0.0, top - 0.3), min(1.0, top + 0.02) + 0.005)
        else:
            axes[1, col].set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=10)
    fig.suptitle(f"{title}: mean over seeds, shaded 95% t-interval (clipped to the metric's range)", fontsize=12)
    return _save(fig, plt, path), window


def lr_figure(sweeps: dict[str, dict[float, list[list[dict]]]], chosen: dict[str, float], metric: str,
              bounds: tuple[float, float], title: str, path: Path) -> Path:
    """Final ``metric`` against the lr per optimizer: a dot per selection seed, a line through
    the means, a ring on the chosen lr; failed runs are drawn as crosses at the panel's edge."""
    from .stats import failed, final

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for i, (name, by_lr) in enumerate(sweeps.items()):
        color = colors(i % 10)
        lrs = sorted(by_lr)
        means = []
        for lr in lrs:
            ok = [final(run, metric) for run in by_lr[lr] if not failed(run)]
            ax.scatter([lr] * len(ok), ok, color=color, s=12, alpha=0.6)
            if len(ok) < len(by_lr[lr]):
                edge = bounds[0] if metric.endswith("acc") else np.nanmax([final(r, metric) for runs in
                                                                           by_lr.values() for r in runs])
                ax.scatter([lr], [edge], color=color, marker="x")
            means.append(np.mean(ok) if ok else np.nan)
        ax.plot(lrs, means, color=color, label=name, lw=1.4)
        if chosen.get(name) in by_lr:
            ax.scatter([chosen[name]], [means[lrs.index(chosen[name])]], s=120, facecolors="none",
                       edgecolors=color, lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (Alice: also the perturbation length sigma)")
    ax.set_ylabel(f"final {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"{title}: lr sensitivity on the selection seeds", fontsize=11)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
