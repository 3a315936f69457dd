"""alice.diagnostics.CurvatureMonitor: the schedule, the cost presets, the three kinds of log
(TensorBoard read back, a callable, JSON lines), the optimizer's update as direction, and the plot."""

import json
import math

import pytest
import torch

from alice.diagnostics import COSTS, CurvatureMonitor, curvature, plot_curvature
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny models


def _loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), data


def _train(model, opt, data, monitor, steps):
    reports = []
    for k in range(steps):
        batch = data[k % len(data)]
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        reports.append(monitor.step(batch))
    return reports


def test_schedule_presets_and_callable_log():
    model, opt, data = _setup()
    calls = []
    monitor = CurvatureMonitor(model, _loss, every=3, sigma=0.01, log=lambda values, step: calls.append((step, values)))
    reports = _train(model, opt, data, monitor, 10)
    assert [k + 1 for k, r in enumerate(reports) if r is not None] == [3, 6, 9]
    assert [r["step"] for r in monitor.records] == [3, 6, 9] == [s for s, _ in calls]
    # economy: 4 draws, the overall row only, no fit
    first = monitor.records[0]
    assert first["draws"] == COSTS["economy"]["draws"] == 4 and first["layers"] == {} and first["fit"] == {}
    assert first["sigma"] == 0.01 and first["direction"] == "sign" and first["seconds"] > 0
    step, values = calls[0]
    assert all(isinstance(v, float) for v in values.values())
    assert values["curvature/glass_fraction"] == first["glass_fraction"]
    assert values["curvature/glass_fraction_high"] == first["glass_fraction_high"]
    assert "curvature/verdict" not in values
    # a callable schedule, an explicit step count, fixed batches and the full preset
    full = CurvatureMonitor(model, _loss, every=lambda s: s in (5, 7), cost="full", sigma=0.02, batches=data[:2])
    assert full.step(step=4) is None
    report = full.step(step=5)
    assert report is not None and full.records[-1]["step"] == 5
    out = full.records[-1]
    assert out["draws"] == 8 and set(out["layers"]) == {"0", "2"}
    assert set(out["fit"]) == {"linear", "hessian", "glass"}
    assert full.step() is None and full.step() is not None  # counts on: 6, then 7
    assert [r["step"] for r in full.records] == [5, 7]
    # overrides of the preset
    custom = CurvatureMonitor(model, _loss, every=1, cost="full", sigma=0.02, draws=2, layers=None, fit=False)
    custom.step(data[0])
    assert custom.records[0]["draws"] == 2 and custom.records[0]["layers"] == {} and custom.records[0]["fit"] == {}


def test_reading_equals_the_instrument_at_the_same_parameters_and_signs():
    model, opt, data = _setup()
    monitor = CurvatureMonitor(model, _loss, every=2, cost="business", sigma=0.01, seed=7)
    _train(model, opt, data, monitor, 2)
    direct = curvature(model, _loss, data[1], sigma=0.01, draws=4, layers="module",
                       generator=torch.Generator().manual_seed(7)).to_dict()
    record = dict(monitor.records[0])
    assert (record.pop("step"), record.pop("direction")) == (2, "sign")
    record.pop("seconds")
    assert record == direct


def test_jsonl_log_and_sigma_from_the_optimizer(tmp_path):
    model, opt, data = _setup()
    path = tmp_path / "logs" / "curvature.jsonl"  # the folder is created at the first reading
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    monitor = CurvatureMonitor(model, _loss, every=2, optimizer=opt, log=str(path))
    for k in range(6):
        opt.zero_grad()
        _loss(model, data[k % 4]).backward()
        opt.step()
        monitor.step(data[k % 4])
        scheduler.step()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert [r["sigma"] for r in lines] == [0.01, 0.005, 0.005]  # the lr when each reading ran
    assert lines == json.loads(json.dumps(monitor.records))
    assert lines[0]["verdict"] in ("flat", "glass", "hessian", "unclear")


def test_direction_update_is_the_optimizer_step():
    model, opt, data = _setup()
    monitor = CurvatureMonitor(model, _loss, every=3, sigma=0.01, direction="update", cost="business")
    before = {}
    for k in range(3):
        if k == 2:
            before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        _loss(model, data[k]).backward()
        opt.step()
        report = monitor.step(data[k])
    update = [p.detach() - b for p, b in zip(model.parameters(), before)]
    direct = curvature(model, _loss, data[2], sigma=0.01, draws=4, direction=update,
                       generator=torch.Generator().manual_seed(0)).to_dict()
    assert monitor.records[0]["direction"] == "update"
    assert report.to_dict()["linear"] == pytest.approx(direct["linear"], rel=1e-6)
    assert report.to_dict()["hess_term"] == pytest.approx(direct["hess_term"], rel=1e-6)
    # with no copy before the first reading (measured at step 1), the reading says it used the sign step
    first = CurvatureMonitor(model, _loss, every=1, sigma=0.01, direction="update")
    first.step(data[0])
    assert first.records[0]["direction"] == "sign"
    assert first.step(data[0]) is not None and first.records[1]["direction"] == "update"


def test_logs_to_tensorboard_and_reads_back(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'alice-optimizer[test]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model, opt, data = _setup()
    writer = SummaryWriter(str(tmp_path / "tb"))
    monitor = CurvatureMonitor(model, _loss, every=2, cost="business", sigma=0.01,
                               log=[writer, str(tmp_path / "c.jsonl")])
    _train(model, opt, data, monitor, 4)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"curvature/glass_fraction", "curvature/glass_fraction_low", "curvature/h_mean",
            "curvature/0/glass_fraction", "curvature/2/rho_mean", "curvature/fit/glass/error_rel"} <= tags
    read = events.Scalars("curvature/glass_fraction")
    assert [e.step for e in read] == [2, 4]
    for event, record in zip(read, monitor.records):
        assert event.value == pytest.approx(record["glass_fraction"], rel=1e-6)
    assert events.Scalars("curvature/0/h_mean")[-1].value == pytest.approx(monitor.records[-1]["layers"]["0"]["h_mean"],
                                                                           rel=1e-6)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 2


def test_plot_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'alice-optimizer[diagnostics]')")
    model, opt, data = _setup()
    log = tmp_path / "c.jsonl"
    monitor = CurvatureMonitor(model, _loss, every=2, cost="business", sigma=0.01, log=log)
    _train(model, opt, data, monitor, 6)
    fig = monitor.plot(tmp_path / "curvature.png", title="t")
    assert (tmp_path / "curvature.png").stat().st_size > 10_000
    top, bottom = fig.axes
    labels = [line.get_label() for line in top.get_lines()]
    assert labels == ["all", "0", "2"]
    assert list(top.get_lines()[1].get_ydata()) == [r["layers"]["0"]["glass_fraction"] for r in monitor.records]
    assert [line.get_label() for line in bottom.get_lines()] == ["linear", "hessian", "glass"]
    assert list(bottom.get_lines()[2].get_ydata()) == [r["fit"]["glass"]["error_rel"] for r in monitor.records]
    # from the JSON-lines log, and an economy run (no fit: one panel)
    assert len(plot_curvature(log).axes) == 2
    economy = CurvatureMonitor(model, _loss, every=1, sigma=0.01)
    economy.step(data[0])
    assert len(economy.plot().axes) == 1
    with pytest.raises(ValueError, match="Invalid records"):
        plot_curvature([])
    with pytest.raises(ValueError, match=r"Invalid records\[0\]"):
        plot_curvature([{"step": 1}])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"every": 0}, "every"),
        ({"every": 2.5}, "every"),
        ({"cost": "cheap"}, "cost"),
        ({"sigma": None}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"optimizer": object(), "sigma": None}, "optimizer"),
        ({"direction": "adam"}, "direction"),
        ({"draws": 1}, "draws"),
        ({"layers": "param"}, "layers"),
        ({"fit": "yes"}, "fit"),
        ({"log": 3}, "log"),
        ({"batches": []}, "batches"),
    ],
)
def test_bad_arguments(kwargs, name, tmp_path):
    model, _, _ = _setup()
    args = {"sigma": 0.01, **kwargs}
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        CurvatureMonitor(model, _loss, **args)


def test_bad_use():
    model, _, data = _setup()
    with pytest.raises(ValueError, match="Invalid batch: None"):
        CurvatureMonitor(model, _loss, every=1, sigma=0.01).step()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    assert CurvatureMonitor(model, _loss, every=1, optimizer=opt).step(data[0]) is None  # lr 0: no sigma
    assert math.isfinite(CurvatureMonitor(model, _loss, every=1, sigma=0.01).step(data[0]).to_dict()["h_mean"])
    called = CurvatureMonitor(model, _loss, every=2, sigma=0.01)  # monitor(batch) is monitor.step(batch)
    assert called(data[0]) is None and called(data[0]) is not None and called.steps == 2


def _docs_block(section: str) -> str:
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_documented_instrument_and_monitor_run_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'alice-optimizer[test]')")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_docs_block("## The curvature instrument:"), "docs/diagnostics.md", "exec"), scope)  # noqa: S102
    assert scope["row"]["verdict"] in ("flat", "glass", "hessian", "unclear")
    assert set(scope["row"]["layers"]) == {"0", "2"}
    scope = {}
    exec(compile(_docs_block("## The instrument over training:"), "docs/diagnostics.md", "exec"), scope)  # noqa: S102
    assert [r["step"] for r in scope["monitor"].records] == [50, 100]
    assert len((tmp_path / "runs" / "curvature.jsonl").read_text().splitlines()) == 2
    assert any(p.name.startswith("events.out") for p in (tmp_path / "runs" / "curvature").iterdir())
