"""Statistics of a comparison: failures, paired differences, Holm's correction, selection.

The rules, stated once (the report repeats them):

* **Failure.** A run fails (diverges) when a train loss or a validation loss is not
  finite, or a validation loss exceeds ``DIVERGENCE`` times the run's initial validation
  loss (step 0). Failures are counted, shown as a rate, and left out of every mean.
* **Paired difference.** Every optimizer sees the same initialisation and mini-batches
  per seed, so it is compared with the reference seed by seed: ``d_s = m_s(opt) -
  m_s(ref)`` over the seeds where neither failed; mean, 95% Student t-interval and the
  two-sided one-sample t-test p-value of ``mean(d) = 0`` (scipy).
* **Holm.** The p-values of one table (one task, every optimizer against the
  reference) are Holm-corrected; a comparison is a **win** or **loss** when its
  corrected p is below ``ALPHA``, else a **tie**.
* **Failures never make a tie.** An optimizer that failed on more seeds than the
  reference loses unless the corrected test says it wins (then "mixed"); one that failed
  on fewer seeds wins unless the test says it loses (then "mixed").
* **Selection.** An lr is scored by the mean of the headline validation metric at the
  end of its sweep runs, over the seeds every lr ran; an lr with a failed seed is never
  chosen; ties on accuracy go to the lower validation loss.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

AXES = {"step": "steps", "grad_evals": "gradient evaluations", "seconds": "seconds"}
DIVERGENCE = 3.0  # a validation loss above this multiple of the initial one is a failure
ALPHA = 0.05


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); a NaN or missing value makes both NaN,
    a single value has half-width NaN."""
    if not values or not all(_finite(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def bounded(values: list[float], low: float = -math.inf, high: float = math.inf) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% t-interval, the ends clipped to the metric's range
    ``[low, high]`` (an accuracy never reads above 1, a time never below 0). NaN ends with
    fewer than two values."""
    mean, half = t_interval(values)
    if not math.isfinite(half):
        return mean, math.nan, math.nan
    return mean, max(low, mean - half), min(high, mean + half)


def final(run: list[dict], metric: str) -> float:
    value = run[-1].get(metric)
    return math.nan if value is None else value


def failed(run: list[dict]) -> bool:
    """Whether the run diverged (see the module's rules)."""
    initial = run[0]["val_loss"]
    for row in run:
        if any(v is None for v in row["train_loss"]):
            return True
        value = row["val_loss"]
        if not _finite(value) or (_finite(initial) and value > DIVERGENCE * initial):
            return True
    return False


@dataclass
class Paired:
    """One optimizer against the reference on one metric (optimizer minus reference)."""

    n: int  # seeds where neither failed
    mean: float
    low: float
    high: float
    p: float
    failures: int  # the optimizer's failed seeds
    reference_failures: int
    p_holm: float = math.nan
    verdict: str = "n/a"


def paired(values: dict[int, float | None], reference: dict[int, float | None]) -> Paired:
    """Per-seed differences ``values[s] - reference[s]`` (None: that run failed) over the
    seeds both have; mean, 95% t-interval and the two-sided p-value of a zero mean."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds if _finite(values[s]) and _finite(reference[s])]
    fails = sum(not _finite(values[s]) for s in seeds)
    ref_fails = sum(not _finite(reference[s]) for s in seeds)
    if len(diffs) < 2:
        mean = statistics.fmean(diffs) if diffs else math.nan
        return Paired(len(diffs), mean, math.nan, math.nan, math.nan, fails, ref_fails)
    mean, half = t_interval(diffs)
    sd = statistics.stdev(diffs)
    if sd == 0:  # every seed gave the same difference: exact
        p = 1.0 if mean == 0 else 0.0
    else:
        from scipy.stats import t

        p = float(2 * t.sf(abs(mean) / (sd / math.sqrt(len(diffs))), len(diffs) - 1))
    return Paired(len(diffs), mean, mean - half, mean + half, p, fails, ref_fails)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down correction of the p-values of one family (NaN stays NaN and does
    not count in the family's size): the i-th smallest of m becomes
    ``max over j <= i of min(1, (m - j + 1) p_(j))``."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


def verdicts(comparisons: list[Paired], higher_is_better: bool) -> list[Paired]:
    """Fill ``p_holm`` and ``verdict`` (win / loss / tie / mixed / n/a, from the optimizer's
    side) for one family of comparisons, in place; returns them."""
    for c, p in zip(comparisons, holm([c.p for c in comparisons])):
        c.p_holm = p
        test = "n/a"
        if math.isfinite(p):
            better = (c.mean > 0) == higher_is_better
            test = "tie" if p >= ALPHA or c.mean == 0 else ("win" if better else "loss")
        if c.failures > c.reference_failures:
            c.verdict = "mixed" if test == "win" else "loss"
        elif c.failures < c.reference_failures:
            c.verdict = "mixed" if test == "loss" else "win"
        else:
            c.verdict = test
    return comparisons


def choose_lr(runs: list[list[dict]], metric: str, higher_is_better: bool) -> float:
    """The lr of the sweep ``runs`` with the best mean final ``metric``, over the seeds that
    every lr ran; an lr with a failed seed is chosen only if every lr failed somewhere."""
    by_lr: dict[float, dict[int, list[dict]]] = defaultdict(dict)
    for run in runs:
        by_lr[run[0]["lr"]][run[0]["seed"]] = run
    seeds = set.intersection(*(set(s) for s in by_lr.values()))

    def score(lr: float) -> tuple:
        chosen = [by_lr[lr][s] for s in sorted(seeds)]
        bad = any(failed(run) for run in chosen)
        value = statistics.fmean(final(run, metric) for run in chosen)
        loss = statistics.fmean(final(run, "val_loss") for run in chosen)
        value = value if math.isfinite(value) else -math.inf if higher_is_better else math.inf
        return bad, -value if higher_is_better else value, loss if math.isfinite(loss) else math.inf

    return min(sorted(by_lr), key=score)


def time_to_target(run: list[dict], metric: str, target: float, higher_is_better: bool) -> dict | None:
    """Steps, gradient evaluations and seconds at the first evaluation point whose
    ``metric`` meets ``target``; None if the run never does."""
    for row in run:
        value = row.get(metric)
        if _finite(value) and (value >= target if higher_is_better else value <= target):
            return {axis: row[axis] for axis in AXES}
    return None


def per_step(runs: list[list[dict]], field: str) -> list[list[float]]:
    """Each run's per-step series of ``field`` (train_loss, step_evals or step_seconds)."""
    return [[v for row in run for v in row[field]] for run in runs]
