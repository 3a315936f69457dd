"""Reporting of the diagnostics: TensorBoard round trip of the documented quick start,
plots, the ``alice probe`` command, its task source, and the compiled reading."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from alice import Alice
from alice.diagnostics import diagnostics

DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _quickstart() -> str:
    """The first Python block of the docs' quick start, as a new user would paste it."""
    text = DOCS.read_text()
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_quick_start_logs_to_tensorboard_and_reads_back(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'alice-optimizer[test]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_quickstart(), str(DOCS), "exec"), scope)  # noqa: S102 - the documented snippet itself
    logdir = tmp_path / "runs" / "alice-diagnostics"
    main = EventAccumulator(str(logdir))
    main.Reload()
    tags = set(main.Tags()["scalars"])
    assert {"alice/glass_fraction", "alice/clip_high", "alice/steps", "alice/0.weight/glass_fraction"} <= tags
    steps = [e.step for e in main.Scalars("alice/steps")]
    assert steps == [50, 100, 150, 200]
    assert [e.value for e in main.Scalars("alice/steps")] == [50.0, 100.0, 150.0, 200.0]
    last = scope["stats"]
    assert main.Scalars("alice/glass_fraction")[-1].value == pytest.approx(last["glass_fraction"], rel=1e-6)
    # add_scalars writes one run per key under <logdir>/<tag>_<key>
    fractions = EventAccumulator(str(logdir / "alice_fractions_clip_high"))
    fractions.Reload()
    values = [e.value for e in fractions.Scalars("alice/fractions")]
    assert len(values) == 4 and all(0.0 <= v <= 1.0 for v in values)
    assert values[-1] == pytest.approx(last["clip_high"], rel=1e-6)


def _history_and_report():
    from alice.diagnostics import probe

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = Alice(model.named_parameters(), lr=0.05, seed=0)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    history = []
    for step in range(1, 25):
        opt.step(closure)
        if step % 4 == 0:
            history.append({"step": step, **diagnostics(opt, per_param=True)})
    report = probe(opt, model=model, loss_fn=torch.nn.functional.cross_entropy, batches=[(x, y)], draws=2)
    return history, report


def test_plot_draws_heatmaps_and_probe_and_saves(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'alice-optimizer[diagnostics]')")
    from alice.diagnostics import plot

    history, report = _history_and_report()
    fig = plot(history, probe=report, path=tmp_path / "d.png", title="t")
    assert (tmp_path / "d.png").stat().st_size > 10_000
    heatmap = fig.axes[0]
    image = heatmap.get_images()[0].get_array()
    assert image.shape == (4, 6)  # 4 tensors x 6 readings
    assert image[0, -1] == pytest.approx(history[-1]["0.weight/glass_fraction"])
    assert [t.get_text() for t in heatmap.get_yticklabels()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(plot(history).axes) == 3 + 3  # three heatmaps and their colour bars
    with pytest.raises(ValueError, match="Invalid history: None"):
        plot()
    with pytest.raises(ValueError, match="no '<name>/glass_fraction' entries"):
        plot([{"glass_fraction": 0.1}])


def test_cli_probe_prints_relu_gelu_and_control_side_by_side(capsys, tmp_path):
    from alice.diagnostics.cli import main

    out = tmp_path / "p.json"
    assert main(["probe", "--steps", "40", "--draws", "2", "--every", "20", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.strip().startswith("relu"))
    assert header.split() == ["relu", "gelu", "logreg", "(control)"]
    for label in ("glass_fraction", "clip_high", "probe: err + H + glass", "probe: best model"):
        assert re.search(rf"^{re.escape(label)}\s", text, re.M)
    assert "[relu] probe per layer" in text and "[gelu] probe per layer" in text
    assert re.search(r"^relu: .*glass makes \d+% of Alice's curvature", text, re.M)
    import json

    runs = json.loads(out.read_text())
    assert [r["column"] for r in runs] == ["relu", "gelu", "logreg (control)"]
    assert runs[0]["steps"] == 40 and len(runs[0]["history"]) == 2


def test_cli_rejects_bad_arguments(capsys):
    from alice.diagnostics.cli import main, run_probe

    with pytest.raises(SystemExit):
        main(["--act", "tanh"])
    assert "invalid choice: 'tanh'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--lr", "-1"])
    assert "must be a positive number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Invalid task: 'nope'"):
        run_probe("nope")


def test_cli_probe_with_adamw_reads_the_instrument_along_training(capsys, tmp_path):
    from alice.diagnostics.cli import main

    out = tmp_path / "p.json"
    assert main(["probe", "--optimizer", "adamw", "--steps", "30", "--every", "15", "--cost", "economy",
                 "--sigma", "0.02", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "30 steps of adamw (lr: relu 0.01, gelu 0.01, logreg (control) 0.003)" in text  # the tasks' defaults
    assert "at sigma 0.02 every 15 steps" in text and "cost economy: 4 draws, overall only, no fit" in text
    for label in ("glass_fraction [95%]", "H term / |D|", "verdict", "seconds reading"):
        assert re.search(rf"^{re.escape(label)}\s", text, re.M)
    assert "[gelu] the instrument after the last step" in text
    assert re.search(r"^relu: glass makes \d+% \[\d+%, \d+%\] of the expected-loss curvature", text, re.M)
    import json

    runs = json.loads(out.read_text())
    assert [r["column"] for r in runs] == ["relu", "gelu", "logreg (control)"]
    assert [r["optimizer"] for r in runs] == ["adamw"] * 3
    assert [[x["step"] for x in r["records"]] for r in runs] == [[15, 30]] * 3
    assert all(x["sigma"] == 0.02 and x["draws"] == 4 for r in runs for x in r["records"])


def test_cli_probe_instrument_settings_are_refused_where_they_do_not_apply():
    from alice.diagnostics.cli import run_probe

    with pytest.raises(ValueError, match="Invalid sigma: 0.1"):
        run_probe(sigma=0.1)
    with pytest.raises(ValueError, match="Invalid cost: 'full'"):
        run_probe(cost="full")
    with pytest.raises(ValueError, match="Invalid lengths"):
        run_probe(optimizer="adamw", lengths=(1.0,))
    with pytest.raises(ValueError, match="Invalid --optimizer: 'nadam'"):
        run_probe(optimizer="nadam")
    with pytest.raises(ValueError, match="disagree"):
        run_probe(optimizer="adamw,lr=0.1", lr=0.2)


def test_add_parser_wires_into_an_alice_parser():
    import argparse

    from alice.diagnostics.cli import add_parser

    parser = argparse.ArgumentParser(prog="alice")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["probe", "--task", "logreg", "--act", "gelu", "--steps", "5"])
    assert (args.task, args.act, args.steps, args.control) == ("logreg", ["gelu"], 5, True)
    assert callable(args.handler)


def test_compiled_reading_matches_the_eager_one():
    from alice import kernels

    if not kernels.available("cpu", warn=False):
        pytest.skip("torch.compile cannot build kernels on this machine")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    opt = Alice(model.named_parameters(), lr=0.05, seed=0, fused=False)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(14):
        opt.step(closure)
    eager = diagnostics(opt, per_param=True)
    opt.param_groups[0]["fused"] = True  # the reading follows the group's flag, as the step does
    fused = diagnostics(opt, per_param=True)
    assert eager.keys() == fused.keys()
    for key, value in eager.items():
        assert fused[key] == pytest.approx(value, rel=1e-5, abs=1e-9) or (math.isnan(value) and math.isnan(fused[key]))
