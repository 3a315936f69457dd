"""Smoke tests of ``alice demo`` and ``alice.demo.run_demo`` on tiny settings."""

import re

import pytest
import torch

from alice.cli import main
from alice.demo import OPTIMIZERS, run_demo

ALICE = "Alice (lr=3e-2)"
ADAM = "Adam (lr=1e-2)"
STEPS_PER_EPOCH = 11  # ceil(1297 / 128) mini-batches


def _by_name(results):
    return {r["optimizer"]: r for r in results}


def test_cli_demo_writes_report(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["demo", "--epochs", "1", "--seeds", "1", "--out", str(out), "--no-progress"]) == 0
    report = out.read_text()
    for name in OPTIMIZERS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        accuracy = float(row.split("|")[3].split("+-")[0])
        assert 0.0 <= accuracy <= 1.0
    assert report in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporary file left behind


def test_cli_without_command_prints_usage(capsys):
    assert main([]) == 2
    assert re.search(r"usage: alice .*demo", capsys.readouterr().out, re.S)


def test_cli_rejects_bad_epochs(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "--epochs: must be >= 1" in capsys.readouterr().err


def test_alice_learns_digits():
    threads = torch.get_num_threads()
    results = _by_name(run_demo(epochs=5, seeds=1, out=None, progress=False))
    assert results[ALICE]["test_acc_mean"] >= 0.85  # measured: 0.918
    # 55 steps: the first 10 (warm-up) and every 4th after sample (3 evaluations).
    assert results[ALICE]["grad_evals"] == 55 + 2 * (10 + 11)
    assert results[ADAM]["grad_evals"] == 5 * STEPS_PER_EPOCH
    assert torch.get_num_threads() == threads


def test_run_demo_is_reproducible():
    first, second = (run_demo(epochs=1, seeds=1, out=None, progress=False) for _ in range(2))
    assert [r["train_loss_mean"] for r in first] == [r["train_loss_mean"] for r in second]


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"seeds": 1.5}, {"epochs": True}])
def test_run_demo_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        run_demo(out=None, progress=False, **kwargs)
