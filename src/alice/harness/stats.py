"""Statistics over seeds: t-intervals, time to target, values at equal budgets, winners.

Every comparison the report makes goes through ``winners``: an optimizer wins an axis
only when its 95% interval does not overlap the interval of any other; otherwise the
optimizers whose intervals overlap the best one's tie. With one seed there is no
interval, so nothing wins.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

AXES = {"step": "steps", "grad_evals": "gradient evaluations", "seconds": "seconds"}


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); a NaN or missing value makes both NaN,
    a single value has half-width NaN."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def final(run: list[dict], metric: str) -> float:
    value = run[-1][metric]
    return math.nan if value is None else value


def choose_lr(runs: list[list[dict]]) -> float:
    """The lr whose runs have the lowest mean final validation loss, over the seeds that
    every lr ran (so no lr is judged on more luck); a diverged lr (NaN) never wins. The
    loss, not accuracy, because accuracy on a few hundred examples ties too often."""
    by_lr: dict[float, dict[int, float]] = defaultdict(dict)
    for run in runs:
        by_lr[run[0]["lr"]][run[0]["seed"]] = final(run, "val_loss")
    seeds = set.intersection(*(set(s) for s in by_lr.values()))

    def score(lr: float) -> float:
        mean = statistics.fmean(by_lr[lr][s] for s in seeds)
        return mean if math.isfinite(mean) else math.inf

    return min(sorted(by_lr), key=score)


def time_to_target(run: list[dict], target) -> dict | None:
    """Steps, gradient evaluations and seconds at the first evaluation point that meets
    ``target``; None if the run never does."""
    for row in run:
        value = row[target.metric]
        if value is not None and math.isfinite(value) and target.reached(value):
            return {axis: row[axis] for axis in AXES}
    return None


def at_budget(run: list[dict], axis: str, budget: float) -> dict:
    """The last evaluation point whose ``axis`` value is within ``budget``."""
    within = [row for row in run if row[axis] <= budget * (1 + 1e-9)]
    return within[-1]


def winners(samples: dict[str, list[float]], higher_is_better: bool) -> list[str]:
    """The best optimizer alone if its interval is clear of all others', else all that tie with it."""
    intervals = {name: t_interval(values) for name, values in samples.items()}
    finite = {n: (m, h) for n, (m, h) in intervals.items() if math.isfinite(m)}
    if not finite:
        return []
    best = (max if higher_is_better else min)(finite, key=lambda n: finite[n][0])
    if len(finite) == 1:
        return [best]
    mean, half = finite[best]
    if not math.isfinite(half):
        return sorted(finite)
    ties = [n for n, (m, h) in finite.items()
            if n == best or not math.isfinite(h) or abs(m - mean) <= h + half]
    return sorted(ties, key=lambda n: finite[n][0], reverse=higher_is_better)


def per_step(runs: list[list[dict]], field: str) -> list[list[float]]:
    """Each run's per-step series of ``field`` (train_loss, step_evals or step_seconds)."""
    return [[v for row in run for v in row[field]] for run in runs]
