"""alice.diagnostics.curvature: the curvature instrument for any model and optimizer."""

import math

import pytest
import torch

from alice import _math
from alice.diagnostics import CurvatureReport, curvature
from alice.diagnostics.probe import GLASS_COEFFICIENT


class Elementwise(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64))


def quadratic(a):
    return lambda model, batch: (0.5 * a * model.w * model.w).sum()


def kink(a, b):
    return lambda model, batch: (a * (model.w - b).abs()).sum()


def test_quadratic_is_hessian_with_no_glass():
    a, sigma = 3.0, 0.5
    model = Elementwise([1.0, -2.0, 0.5])
    report = curvature(model, quadratic(a), [None], sigma=sigma, draws=4, layers=None)
    assert isinstance(report, CurvatureReport)
    out = report.to_dict()
    assert out["h_mean"] == pytest.approx(a, rel=1e-12)
    assert out["rho_mean"] == pytest.approx(0.0, abs=1e-20)
    assert out["glass_fraction"] == pytest.approx(0.0, abs=1e-9)
    # d = -sigma sign(g0): D = -sigma a sum|w|, T_h = 3 * a sigma^2 / 2, T_g = 0
    assert out["linear"] == pytest.approx(-sigma * a * 3.5)
    assert out["hess_term"] == pytest.approx(3 * 0.5 * a * sigma ** 2)
    assert out["margin"] == pytest.approx(0.05 * sigma * a * 3.5)
    assert out["verdict"] == "hessian"
    # the quadratic model is exact on a quadratic; the linear one is not
    assert out["fit"]["hessian"]["error"] == pytest.approx(0.0, abs=1e-12)
    assert out["fit"]["hessian"]["r2"] == pytest.approx(1.0)
    assert out["fit"]["linear"]["error"] > 0.1
    assert out["layers"] == {}
    assert out["draws"] == 4 and out["sigma"] == sigma


def test_quadratic_with_small_sigma_is_flat():
    model = Elementwise([1.0])
    out = curvature(model, quadratic(2.0), [None], sigma=1e-3, draws=3).to_dict()
    assert out["hess_term"] == pytest.approx(0.5 * 2.0 * 1e-6)  # far below 0.05 |D| = 1e-4
    assert out["verdict"] == "flat"


def test_kink_within_sigma_is_glass_with_the_math_formulas():
    a, b, sigma = 2.0, 0.3, 0.1
    w = torch.tensor([b + 0.02, b - 0.05, b + 0.09], dtype=torch.float64)  # |w - b| < sigma
    model = Elementwise(w)
    out = curvature(model, kink(a, b), [None], sigma=sigma, draws=5).to_dict()
    # by hand: g+ = a z, g- = -a z, g0 = a sign(w - b): h = a / sigma, rho = 2 a^2 / sigma
    assert out["h_mean"] == pytest.approx(a / sigma)
    assert out["rho_mean"] == pytest.approx(2 * a * a / sigma)
    z = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    g0 = a * torch.sign(w - b)
    h = _math.hessian_sample(a * z, -a * z, sigma, 0.0, "abs")
    rho = _math.glass_sample(a * z, -a * z, g0, sigma)
    assert out["h_mean"] == pytest.approx(h.mean().item())
    assert out["rho_mean"] == pytest.approx(rho.mean().item())
    th, tg = 3 * 0.5 * a * sigma, 3 * GLASS_COEFFICIENT * math.sqrt(2) * a * sigma
    assert out["hess_term"] == pytest.approx(th)
    assert out["glass_term"] == pytest.approx(tg)
    assert out["glass_fraction"] == pytest.approx(tg / (th + tg))
    assert out["glass_fraction_low"] <= out["glass_fraction"] <= out["glass_fraction_high"]
    assert out["verdict"] == "glass"
    errors = [out["fit"][m]["error"] for m in ("linear", "hessian", "glass")]
    assert errors[0] > errors[1] > errors[2]
    assert set(out["layers"]) == {"(root)"}
    assert out["layers"]["(root)"]["verdict"] == "glass"


def test_parameters_grads_and_modes_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    model(x).pow(2).mean().backward()
    model[3].weight.grad = None
    before = [p.detach().clone() for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.train()
    model[2].eval()
    loss_fn = lambda m, batch: torch.nn.functional.mse_loss(m(batch[0]), batch[1])  # noqa: E731
    curvature(model, loss_fn, (x, y), sigma=0.05, draws=2)
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.equal(p, b)
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    assert model.training and model[0].training and not model[2].training


def test_deterministic_given_generator():
    model = Elementwise(torch.linspace(-1, 1, 10))
    fn = kink(1.0, 0.0)
    r1 = curvature(model, fn, [None], sigma=0.3, draws=3, generator=torch.Generator().manual_seed(5)).to_dict()
    r2 = curvature(model, fn, [None], sigma=0.3, draws=3, generator=torch.Generator().manual_seed(5)).to_dict()
    assert r1 == r2


def test_mlp_trained_by_sgd_per_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    loss_fn = lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1])  # noqa: E731
    report = curvature(model, loss_fn, batches, sigma=0.05, draws=4)
    out = report.to_dict()
    assert set(out["layers"]) == {"0", "2"}
    for row in [out, *out["layers"].values()]:
        for key in ("h_mean", "rho_mean", "glass_fraction", "glass_fraction_low", "glass_fraction_high"):
            assert isinstance(row[key], float) and math.isfinite(row[key])
        assert row["h_mean"] > 0 and row["rho_mean"] >= 0
        assert 0 <= row["glass_fraction_low"] <= row["glass_fraction"] <= row["glass_fraction_high"] <= 1
        assert row["verdict"] in ("flat", "glass", "hessian", "unclear")
    assert out["linear"] < 0  # -sigma sign(g0) descends
    assert out["layers"]["0"]["numel"] + out["layers"]["2"]["numel"] == out["numel"] == 5 * 16 + 16 + 16 * 3 + 3
    for m in ("linear", "hessian", "glass"):
        assert set(out["fit"][m]) == {"error", "error_rel", "r2"}
    text = str(report)
    assert "verdict" in text and "margin" in text
    # a user direction: the SGD step
    opt.zero_grad()
    loss_fn(model, (x, y)).backward()
    direction = [-0.1 * p.grad for p in model.parameters()]
    out2 = curvature(model, loss_fn, batches, sigma=0.05, draws=2, direction=direction).to_dict()
    assert out2["linear"] < 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"loss_fn": lambda m, b: m.w * 1.0}, "loss_fn"),  # a vector loss
        ({"loss_fn": lambda m, b: (m.w * math.inf).sum()}, "loss_fn"),
        ({"loss_fn": lambda m, b: 1.0}, "loss_fn"),
        ({"draws": 1}, "draws"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -0.1}, "sigma"),
        ({"direction": [torch.zeros(3)]}, "direction"),
        ({"direction": [torch.zeros(2), torch.zeros(2)]}, "direction"),
        ({"layers": "param"}, "layers"),
    ],
)
def test_bad_inputs(kwargs, name):
    model = Elementwise([1.0, 2.0])
    args = {"loss_fn": quadratic(1.0), "sigma": 0.1, "draws": 2, **kwargs}
    fn = args.pop("loss_fn")
    before = model.w.detach().clone()
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        curvature(model, fn, [None], **args)
    assert torch.equal(model.w, before)
