"""Statistics of the report on synthetic records whose answers are known."""

import math

import pytest

from alice.harness import stats
from alice.harness.tasks import Target

ACC = Target("val_acc", 0.9)


def run(lr, seed, accs, per_step_evals=3, per_step_seconds=0.5, every=10):
    """Rows of a synthetic run evaluated every ``every`` steps with val accuracies ``accs``."""
    return [dict(lr=lr, seed=seed, step=i * every, grad_evals=i * every * per_step_evals,
                 seconds=i * every * per_step_seconds, val_acc=a, test_acc=a) for i, a in enumerate(accs)]


def test_t_interval_matches_the_formula():
    mean, half = stats.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(stats.t_interval([1.0])[1])
    assert math.isnan(stats.t_interval([1.0, float("nan")])[0])


def test_time_to_target_is_the_first_evaluation_at_target():
    rows = run(1e-3, 0, [0.1, 0.5, 0.91, 0.85, 0.95])
    assert stats.time_to_target(rows, ACC) == {"step": 20, "grad_evals": 60, "seconds": 10.0}
    assert stats.time_to_target(run(1e-3, 0, [0.1, 0.89]), ACC) is None
    loss = Target("val_loss", 1.0)
    assert stats.time_to_target([dict(step=s, grad_evals=s, seconds=s, val_loss=v)
                                 for s, v in [(0, 3.0), (5, 1.0)]], loss)["step"] == 5


def test_at_budget_takes_the_last_point_within():
    rows = run(1e-3, 0, [0.1, 0.5, 0.7, 0.8])
    assert stats.at_budget(rows, "grad_evals", 65)["step"] == 20
    assert stats.at_budget(rows, "seconds", 15.0)["step"] == 30


def test_winners_ties_overlapping_intervals():
    assert stats.winners({"a": [0.90, 0.91, 0.92], "b": [0.80, 0.81, 0.82]}, True) == ["a"]
    assert stats.winners({"a": [0.90, 0.91, 0.92], "b": [0.85, 0.91, 0.95]}, True) == ["a", "b"]
    assert stats.winners({"a": [1.0, 1.1], "b": [3.0, 3.1]}, higher_is_better=False) == ["a"]
    assert stats.winners({"a": [0.9], "b": [0.1]}, True) == ["a", "b"]  # one seed: no interval, no winner
    assert stats.winners({"a": [float("nan")] * 3, "b": [0.5] * 3}, True) == ["b"]


def test_choose_lr_uses_validation_loss_over_common_seeds():
    def losses(lr, seed, final_loss):
        return [dict(lr=lr, seed=seed, step=0, val_loss=2.3), dict(lr=lr, seed=seed, step=10, val_loss=final_loss)]

    runs = [losses(1e-3, 0, 0.5), losses(1e-2, 0, 0.2), losses(1e-2, 1, 9.0), losses(1e-1, 0, float("nan"))]
    assert stats.choose_lr(runs) == 1e-2  # seed 1 is ignored: only 1e-2 ran it
