"""The study's protocol end to end: grid extension at an edge, equal-evaluation budgets,
summary.json against results.jsonl and by hand, bounds in the report, extras checked first."""

import json
import math
import sys
from pathlib import Path

import pytest

from alice.harness import records, report
from alice.harness.runner import Settings, compare


def finished(out: Path) -> list[list[dict]]:
    return list(records.finished_runs(records.read_rows(out / records.RESULTS)).values())


def run(tmp_path, **kw) -> Path:
    settings = Settings(**{"out": tmp_path / "out", "progress": False, "seeds": 1, **kw})
    compare(settings)
    return Path(settings.out)


def test_a_choice_at_the_edge_extends_the_grid_up_to_the_bound(tmp_path):
    # Adam at lr 1e-5 for 20 steps barely moves: the largest lr of the grid wins each round.
    out = run(tmp_path, optimizers=("adam,lr=1e-5",), steps=20, eval_every=20, sweep=2, sweep_factor=10,
              sweep_seeds=1, max_extend=2)
    runs = finished(out)
    sweep = sorted(r[0]["lr"] for r in runs if r[0]["phase"] == "sweep")
    assert sweep == pytest.approx([3.16e-6, 3.16e-5, 3.16e-4, 3.16e-3])  # two extensions upwards, then stop
    (final,) = [r for r in runs if r[0]["phase"] == "final"]
    assert final[0]["lr"] == 3.16e-3 and final[0]["seed"] == 0 and {r[0]["seed"] for r in runs} == {0, 1000}
    assert "chosen, **at the grid's edge**" in (out / "report.md").read_text()


def test_equal_evaluation_budget(tmp_path):
    # Alice: 10 warm-up sampling steps (30 evaluations), then steps 11-16 cost 1, 3, 1, 1, 1, 3: 40 in 16 steps.
    out = run(tmp_path, optimizers=("alice", "adam"), budget="evals=40", seeds=1)
    ends = {r[0]["optimizer"]: r[-1] for r in finished(out)}
    assert (ends["alice"]["step"], ends["alice"]["grad_evals"]) == (16, 40)
    assert (ends["adam"]["step"], ends["adam"]["grad_evals"]) == (40, 40)
    assert ends["alice"]["budget"] == "evals=40" and ends["alice"]["eval_every"] == 1  # 2% of 16 steps, at least 1
    with pytest.raises(ValueError, match=r"--budget: 'evals=2' allows alice no step"):
        run(tmp_path / "small", optimizers=("alice", "adam"), budget="evals=2")
    with pytest.raises(ValueError, match=r"--budget: 'flops=3' \(valid: steps=N or evals=N"):
        run(tmp_path / "bad", budget="flops=3")


def test_summary_json_matches_results_and_alice_rows_carry_curvature(tmp_path):
    out = run(tmp_path, optimizers=("alice", "adam", "sgd"), seeds=2, steps=24, eval_every=6)
    summary = json.loads((out / "summary.json").read_text())
    task = summary["tasks"]["digits-mlp"]
    assert task["metric"] == "acc" and task["reference"] == "adam"
    runs = finished(out)
    test = {name: {r[0]["seed"]: r[-1]["test_acc"] for r in runs if r[0]["optimizer"] == name} for name in task["optimizers"]}
    for name, entry in task["optimizers"].items():
        assert set(entry) == {"lr", "seeds", "failures", "val", "test", "vs_reference"}
        assert entry["seeds"] == [0, 1] and entry["failures"] == 0
        assert entry["test"]["mean"] == pytest.approx(sum(test[name].values()) / 2)
        assert entry["test"]["low"] >= 0 and entry["test"]["high"] <= 1
        if name == "adam":
            assert entry["vs_reference"] is None
        else:
            assert set(entry["vs_reference"]) == {"mean", "low", "high", "p_holm", "verdict"}
            diff = sum(test[name][s] - test["adam"][s] for s in (0, 1)) / 2
            assert entry["vs_reference"]["mean"] == pytest.approx(diff)
    alice_rows = [row for r in runs if r[0]["optimizer"] == "alice" for row in r]
    assert all({"clip_high", "glass_fraction", "step_ratio_adam"} <= set(row["diagnostics"]) for row in alice_rows if row["step"])
    assert sum("probe" in row for row in alice_rows) == 2 * 3  # a third, two thirds and the end, per seed
    assert all("diagnostics" not in row for r in runs if r[0]["optimizer"] != "alice" for row in r)
    assert all("versions" in r[0] and not any("versions" in row for row in r[1:]) for r in runs)  # context once


def synthetic(path: Path, table: dict[str, dict[int, float]], evals_per_step: dict[str, int]) -> None:
    """A results file of final runs of digits-mlp whose last rows carry ``table``'s test accuracies."""
    writer = records.Writer(path)
    for name, by_seed in table.items():
        for seed, acc in by_seed.items():
            head = dict(run=f"{name}-{seed}", attempt="x", task="digits-mlp", optimizer=name, lr=0.01, seed=seed,
                        steps=10, batch_size=8, eval_every=5, phase="final", budget="steps=10", reference="adam")
            for step in (0, 5, 10):
                writer.write(dict(head, step=step, grad_evals=step * evals_per_step[name], seconds=step * 0.1,
                                  train_loss=[0.5] * (5 if step else 0), step_evals=[0] * (5 if step else 0),
                                  step_seconds=[0.0] * (5 if step else 0), val_loss=2.0 - 0.1 * step,
                                  val_acc=min(1.0, acc + 0.001 * step - 0.01), test_loss=0.1 if step == 10 else None,
                                  test_acc=acc if step == 10 else None, done=step == 10))


def test_summary_and_report_by_hand_with_bounded_intervals(tmp_path):
    table = {"adam": {0: 0.990, 1: 1.0, 2: 0.995, 3: 1.0},
             "alice": {0: 0.995, 1: 1.0, 2: 1.0, 3: 1.0}}  # differences 0.005, 0, 0.005, 0
    synthetic(tmp_path / records.RESULTS, table, {"adam": 1, "alice": 2})
    report.write_report(tmp_path)
    entry = json.loads((tmp_path / "summary.json").read_text())["tasks"]["digits-mlp"]["optimizers"]
    half = 3.182446 * math.sqrt(0.0025 ** 2 * 4 / 3) / 2  # t_{0.975,3} * sd / sqrt(4)
    assert entry["alice"]["vs_reference"]["mean"] == pytest.approx(0.0025)
    assert entry["alice"]["vs_reference"]["high"] == pytest.approx(0.0025 + half, rel=1e-5)
    assert entry["alice"]["vs_reference"]["verdict"] == "tie"  # p = 0.18
    assert entry["alice"]["test"]["high"] == 1.0 and entry["adam"]["test"]["high"] == 1.0  # clipped, not 1.003
    md = (tmp_path / "report.md").read_text()
    assert "at 2.00x its gradient evaluations" in md and "**alice** against adam: no difference detected at 95% (tie)" in md
    assert "0.9988 [0.9948, 1]" in md  # the mean and its interval, clipped at 1
    assert "moving average over 1 steps" in md


def test_missing_extra_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs matplotlib: pip install 'alice-optimizer\[compare\]'"):
        run(tmp_path, steps=2)
    assert not (tmp_path / "out").exists()


def test_reference_must_be_compared(tmp_path):
    with pytest.raises(ValueError, match=r"--reference: 'adam' is not among the optimizers \['alice', 'sgd'\]"):
        run(tmp_path, optimizers=("alice", "sgd"), steps=2)


def test_adamw_and_alice_wd_decay_the_same_groups():
    import torch

    from alice.harness import optimizers

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    for name in ("adamw", "alice-wd"):
        opt = optimizers.parse(name).build(model, 0.01, seed=0)
        decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        assert [decay[id(p)] for p in model.parameters()] == [0.01, 0.0, 0.0, 0.0, 0.01, 0.0]
    opt = optimizers.parse("adamw,weight_decay=0.1").build(model, 0.01, seed=0)
    assert opt.param_groups[0]["weight_decay"] == 0.1
