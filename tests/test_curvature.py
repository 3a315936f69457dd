"""alice.diagnostics.curvature: the curvature instrument for any model and optimizer."""

import math

import pytest
import torch

from alice import _math
from alice.diagnostics import CurvatureReport, curvature
from alice.diagnostics.probe import GLASS_COEFFICIENT
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny models


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
        ({"fit": 1}, "fit"),
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


def test_separable_kinks_read_the_density_the_spec_estimator_gives():
    # L = sum a_i |w_i - b_i|. Within sigma of its kink an element sees g+ = a z, g- = -a z,
    # g0 = a sign(w - b) whatever the signs z: h = a / sigma, rho = 2 (0 - g0)^2 / sigma = 2 a^2 / sigma.
    # Beyond sigma, g+ = g- = g0: h = rho = 0. Along d = -sigma sign(g0), per element within:
    # T_h = a sigma / 2, T_g = c sqrt(2 a^2 / sigma) sigma^1.5 = c sqrt(2) a sigma.
    sigma = 0.2
    a = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 4.0], dtype=torch.float64)
    b = torch.tensor([0.1, -0.4, 0.7, 0.0, -1.0, 2.0], dtype=torch.float64)
    offset = torch.tensor([0.05, -0.15, 0.1, 0.5, -0.3, 0.9], dtype=torch.float64)  # first three within sigma
    model = Elementwise(b + offset)
    out = curvature(model, kink(a, b), [None], sigma=sigma, draws=3).to_dict()
    inside = offset.abs() < sigma
    assert out["h_mean"] == pytest.approx((a * inside).sum().item() / sigma / 6, rel=1e-12)
    assert out["rho_mean"] == pytest.approx((2 * a * a * inside).sum().item() / sigma / 6, rel=1e-12)
    th, tg = 0.5 * sigma * 3.0, GLASS_COEFFICIENT * math.sqrt(2) * sigma * 3.0  # sum of a within: 3.0
    assert out["hess_term"] == pytest.approx(th, rel=1e-12)
    assert out["glass_term"] == pytest.approx(tg, rel=1e-12)
    # the samples do not depend on the signs: the interval has no width
    assert out["glass_fraction_low"] == pytest.approx(out["glass_fraction_high"])
    kink_glass = GLASS_COEFFICIENT * math.sqrt(2)
    assert out["glass_fraction"] == pytest.approx(kink_glass / (0.5 + kink_glass))
    assert out["verdict"] == "glass"


def test_linear_loss_is_flat():
    a = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    model = Elementwise([0.3, -1.0, 2.0, 0.0])
    out = curvature(model, lambda m, batch: (a * m.w).sum(), [None], sigma=0.1, draws=3).to_dict()
    assert out["h_mean"] == 0.0 and out["rho_mean"] == 0.0
    assert out["hess_term_high"] == 0.0 and out["glass_term_high"] == 0.0
    assert out["glass_fraction"] == out["glass_fraction_high"] == 0.0
    assert out["linear"] == pytest.approx(-0.1 * 6.5)
    assert out["verdict"] == "flat"
    assert out["fit"]["linear"]["error"] == pytest.approx(0.0, abs=1e-12)


def _mlp(act, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), act(), torch.nn.Linear(32, 32), act(),
                               torch.nn.Linear(32, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(256, 10, generator=g, dtype=torch.float64), torch.randint(0, 3, (256,), generator=g)


def _xent(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_relu_reads_more_glass_than_gelu_at_the_same_sigma():
    # the same weights (the activations have none), data and sigma: ReLU's kinks make glass,
    # GELU's smooth curvature makes some too at this sigma, but clearly less (measured:
    # 0.41 [0.38, 0.44] against 0.084 [0.079, 0.089])
    batch = _data()
    relu = curvature(_mlp(torch.nn.ReLU), _xent, batch, sigma=0.01, draws=6, layers=None).to_dict()
    gelu = curvature(_mlp(torch.nn.GELU), _xent, batch, sigma=0.01, draws=6, layers=None).to_dict()
    assert relu["glass_fraction_low"] > gelu["glass_fraction_high"]
    assert relu["glass_fraction"] > 3 * gelu["glass_fraction"]
    assert relu["rho_mean"] > 10 * gelu["rho_mean"]


def test_intervals_shrink_as_draws_grow():
    (x, y), model = _data(), _mlp(torch.nn.ReLU)
    batch = (x[:64], y[:64])
    widths = []
    for draws in (3, 12, 48):
        out = curvature(model, _xent, batch, sigma=0.01, draws=draws, layers=None, fit=False).to_dict()
        assert out["glass_fraction_low"] <= out["glass_fraction"] <= out["glass_fraction_high"]
        widths.append([out[f"{k}_high"] - out[f"{k}_low"] for k in ("glass_fraction", "h_mean", "rho_mean")])
        assert out["fit"] == {} and out["measured"] == []
    # the half-width goes like t_{n-1} s / sqrt(n): 2.48, 0.64, 0.29 sample standard deviations s
    # (s itself is noisy with 3 draws: measured over four seeds 1 : 0.20..0.72 : 0.10..0.32)
    for wide, narrow in zip(widths, widths[1:]):
        assert all(n < w for w, n in zip(wide, narrow))
    assert all(n < 0.5 * w for w, n in zip(widths[0], widths[-1]))


def test_agrees_with_alice_diagnostics_and_probe_on_the_same_state():
    # Alice's estimates are averages over steps of samples at its own points and signs; on
    # kinks within sigma (h = a / sigma, rho = 2 a^2 / sigma) and a quadratic (h = c, rho = 0)
    # every sample is the same whatever the point and the signs, so Alice's state and the
    # instrument must read the same numbers, and the same terms along Alice's step.
    from alice import Alice
    from alice.diagnostics import probe

    sigma = 0.1
    g = torch.Generator().manual_seed(3)
    a = 0.5 + 1.5 * torch.rand(40, generator=g, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    c = 0.5 + 3 * torch.rand(20, generator=g, dtype=torch.float64)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kinks = torch.nn.Parameter(b + sigma * (0.6 * torch.rand(40, generator=g, dtype=torch.float64) - 0.3))
            self.bowl = torch.nn.Parameter(torch.randn(20, generator=g, dtype=torch.float64))

    model = Model()
    loss_fn = lambda m, batch: (a * (m.kinks - b).abs()).sum() + (0.5 * c * m.bowl ** 2).sum()  # noqa: E731
    # a small fixed bound keeps every kink within sigma of the points Alice and the instrument visit
    opt = Alice(model.parameters(), lr=sigma, limit_method="fixed", lr_max=0.02 * sigma, seed=0)
    closure = lambda: (opt.zero_grad(), loss_fn(model, None).backward())[0] or loss_fn(model, None)  # noqa: E731
    for _ in range(14):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
    phi = 1 - 0.9  # the centre takes phi of the step: the last update is phi s
    step = [(p.detach() - q) / phi for p, q in zip(model.parameters(), before)]
    stats = opt.diagnostics()
    out = curvature(model, loss_fn, [None], sigma=sigma, draws=3, direction=step).to_dict()
    assert out["h_mean"] == pytest.approx(stats["h_mean"], rel=1e-9)
    assert out["rho_mean"] == pytest.approx(stats["rho_mean"], rel=1e-9)
    assert out["h_mean"] == pytest.approx((a.sum() / sigma + c.sum()).item() / 60, rel=1e-9)
    row = probe(opt, lambda: loss_fn(model, None), draws=2, layers="none").rows[0]
    assert out["hess_term"] == pytest.approx(row.terms["hessian"], rel=1e-6)
    assert out["glass_term"] == pytest.approx(row.terms["glass"], rel=1e-6)
    assert out["glass_fraction"] == pytest.approx(row.terms["glass"] / (row.terms["glass"] + row.terms["hessian"]),
                                                  rel=1e-6)
