"""Statistics of the report on small tables whose answers are computed by hand.

With 3 seeds (2 degrees of freedom) Student's t has closed forms: the 97.5% quantile
is 4.302653 and the two-sided p-value of t is ``1 - t / sqrt(t^2 + 2)``.
"""

import math

import pytest

from alice.harness import stats

T2 = 4.302653  # t_{0.975, 2}


def p2(t):
    """Two-sided p-value of Student's t with 2 degrees of freedom."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def test_t_interval_matches_the_formula():
    mean, half = stats.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(T2 * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(stats.t_interval([1.0])[1])
    assert math.isnan(stats.t_interval([1.0, float("nan")])[0])


def test_bounded_intervals_stay_in_the_metrics_range():
    mean, low, high = stats.bounded([0.99, 1.0, 1.0, 0.98], 0.0, 1.0)
    assert mean == pytest.approx(0.9925) and high == 1.0 and low == pytest.approx(0.9925 - 3.182446 * 0.0095743 / 2, rel=1e-4)
    assert stats.bounded([1.0, 50.0, 2.0], 0.0)[1] == 0.0  # a time is never negative
    assert math.isnan(stats.bounded([0.5], 0.0, 1.0)[1])


# Reference and three optimizers on seeds 0-2 (accuracy: higher is better).
REF = {0: 0.90, 1: 0.92, 2: 0.91}
TABLE = {
    "a": {0: 0.93, 1: 0.94, 2: 0.95},  # differences 0.03, 0.02, 0.04: mean 0.03, sd 0.01
    "b": {0: 0.89, 1: 0.93, 2: 0.91},  # -0.01, 0.01, 0: mean 0
    "c": {0: 0.88, 1: 0.88, 2: 0.88},  # -0.02, -0.04, -0.03: mean -0.03, sd 0.01
}


def test_paired_difference_interval_and_p_value():
    a = stats.paired(TABLE["a"], REF)
    t = 0.03 / (0.01 / math.sqrt(3))  # 5.196
    assert a.n == 3 and a.mean == pytest.approx(0.03)
    assert (a.low, a.high) == pytest.approx((0.03 - T2 * 0.01 / math.sqrt(3), 0.03 + T2 * 0.01 / math.sqrt(3)), rel=1e-5)
    assert a.p == pytest.approx(p2(t), rel=1e-6) and a.p == pytest.approx(0.035099, rel=1e-4)
    assert stats.paired(TABLE["b"], REF).p == pytest.approx(1.0)


def test_holm_correction_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    corrected = stats.holm([0.01, float("nan"), 0.04])  # NaN is not part of the family
    assert corrected[0] == pytest.approx(0.02) and math.isnan(corrected[1]) and corrected[2] == pytest.approx(0.04)


def test_verdicts_use_the_corrected_test():
    family = stats.verdicts([stats.paired(TABLE[k], REF) for k in "abc"], higher_is_better=True)
    # a and c alone would pass at 0.05 (p = 0.0351); Holm over three: 3 x 0.0351, then 1.
    assert [c.p_holm for c in family] == pytest.approx([3 * 0.035099, 1.0, 3 * 0.035099], rel=1e-4)
    assert [c.verdict for c in family] == ["tie", "tie", "tie"]
    (alone,) = stats.verdicts([stats.paired(TABLE["a"], REF)], higher_is_better=True)
    assert alone.verdict == "win" and alone.p_holm == pytest.approx(0.035099, rel=1e-4)
    (lower,) = stats.verdicts([stats.paired(TABLE["a"], REF)], higher_is_better=False)
    assert lower.verdict == "loss"  # the same numbers as losses: higher is worse


def test_failures_are_excluded_counted_and_never_a_tie():
    ref = {**REF, 3: 0.93}
    mine = {0: None, 1: 0.94, 2: 0.95, 3: 0.96}  # seed 0 diverged; 0.02, 0.04, 0.03 on the others
    c = stats.paired(mine, ref)
    assert (c.n, c.failures, c.reference_failures) == (3, 1, 0)
    assert c.mean == pytest.approx(0.03) and c.high - c.low == pytest.approx(2 * T2 * 0.01 / math.sqrt(3), rel=1e-5)
    assert stats.verdicts([c], True)[0].verdict == "mixed"  # the test says win, a failure says otherwise
    tied = stats.paired({0: None, 1: 0.91, 2: 0.93, 3: 0.92}, ref)  # -0.01, +0.01, -0.01: a tie on its own
    assert stats.verdicts([tied], True)[0].verdict == "loss"
    worse_ref = stats.paired({s: v + 0.001 for s, v in ref.items()}, {**ref, 2: None})
    assert worse_ref.failures == 0 and stats.verdicts([worse_ref], True)[0].verdict == "win"
    none = stats.paired({0: None, 1: None}, {0: 0.9, 1: 0.9})
    assert none.n == 0 and stats.verdicts([none], True)[0].verdict == "loss"


def rows(lr, seed, val_acc, val_loss, train=(1.0,), initial=2.3):
    """A synthetic run: step 0, then one evaluation with the given final values."""
    return [dict(lr=lr, seed=seed, step=0, val_loss=initial, val_acc=0.1, train_loss=[]),
            dict(lr=lr, seed=seed, step=10, val_loss=val_loss, val_acc=val_acc, train_loss=list(train))]


def test_failure_rule():
    assert not stats.failed(rows(1, 0, 0.9, 0.3))
    assert stats.failed(rows(1, 0, 0.9, 0.3, train=(1.0, None)))  # a non-finite train loss
    assert stats.failed(rows(1, 0, 0.1, float("nan")))
    assert stats.failed(rows(1, 0, 0.1, stats.DIVERGENCE * 2.3 + 0.01))
    assert not stats.failed(rows(1, 0, 0.1, stats.DIVERGENCE * 2.3))


def test_choose_lr_on_the_headline_metric_over_common_seeds():
    runs = [rows(1e-3, 0, 0.80, 0.5), rows(1e-3, 1, 0.82, 0.5),
            rows(1e-2, 0, 0.90, 0.9), rows(1e-2, 1, 0.88, 0.9),  # best accuracy, worse loss: chosen on accuracy
            rows(1e-1, 0, 0.99, 0.2), rows(1e-1, 1, 0.99, 99.0),  # best mean accuracy, but seed 1 diverged
            rows(3e-1, 0, 1.00, 0.1)]  # only seed 0 ran: judged on seed 0 with the others
    assert stats.choose_lr(runs[:6], "val_acc", True) == 1e-2
    assert stats.choose_lr(runs[:4], "val_loss", False) == 1e-3
    tie = [rows(1e-3, 0, 0.9, 0.5), rows(1e-2, 0, 0.9, 0.4)]
    assert stats.choose_lr(tie, "val_acc", True) == 1e-2  # equal accuracy: the lower loss
    assert stats.choose_lr(runs, "val_acc", True) == 3e-1  # on seed 0 alone, 3e-1 is best and finite


def test_time_to_target_is_the_first_evaluation_at_target():
    run = [dict(step=10 * i, grad_evals=30 * i, seconds=5.0 * i, val_acc=a) for i, a in enumerate([0.1, 0.5, 0.91, 0.85])]
    assert stats.time_to_target(run, "val_acc", 0.9, True) == {"step": 20, "grad_evals": 60, "seconds": 10.0}
    assert stats.time_to_target(run, "val_acc", 0.95, True) is None
    loss = [dict(step=s, grad_evals=s, seconds=s, val_loss=v) for s, v in [(0, 3.0), (5, 1.0)]]
    assert stats.time_to_target(loss, "val_loss", 1.0, False)["step"] == 5
