"""``alice.diagnostics.probe``: the model-fit probe on problems whose answer is known.

* Kinks ``sum a |x - b|`` with every point the probe visits within ``sigma`` of its
  kink: the Rademacher expectation ``E|d + sigma z| = sigma`` is flat there, so the
  true change is zero up to the draws' noise. Each model ``m(t) = -|g| t + h t^2/2
  + c sqrt(rho) t^1.5`` is convex with ``m(0) = 0`` and Alice's step does not pass
  its minimiser, so at lengths ``<= 1``: ``linear < hessian < glass <= 0``. Zero is
  nearest to the glass model: (c) beats (b) beats (a).
* A quadratic: ``E_z L(x + sigma z) = L(x) + const`` and the Hessian sample is ``a``
  exactly, so the measured change minus model (b) is linear in the length (only the
  gradient term can differ), and with no glass (b) and (c) agree.
"""

from __future__ import annotations

import math

import pytest
import torch

from alice import Alice
from alice.diagnostics import MODELS, ProbeReport, held_loss, probe
from helpers import train_on

D = 1000
SIGMA = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _values(lo, hi, seed, n=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)


def _train(loss_of, params, steps, **kwargs):
    opt = Alice(params, seed=0, **kwargs)
    train_on(opt, loss_of, steps)
    return opt


def _kinks():
    """Within 0.3 sigma of each kink; the fixed bound 0.02 sigma keeps the centre within
    0.4 sigma after 50 steps, and the probe's points within 0.42 sigma."""
    a, b = _values(0.5, 2.0, 1), _values(-1, 1, 2)
    x = torch.nn.Parameter(b + SIGMA * _values(-0.3, 0.3, 3))
    loss = lambda: (a * (x - b).abs()).sum()  # noqa: E731
    opt = _train(loss, [x], 50, lr=SIGMA, limit_method="fixed", lr_max=0.02 * SIGMA)
    return a, b, x, opt, loss


def test_glass_model_beats_hessian_beats_linear_on_kinks():
    a, b, x, opt, loss = _kinks()
    report = probe(opt, loss, lengths=(0.25, 0.5, 1.0), draws=32)
    row = report.row("all")
    # the true change is lam * (1/K) sum_k sum_i a_i z_ik s_i: zero mean, standard deviation
    # at most lam * 0.02 sigma * |a| / sqrt(K)
    bound = 0.02 * SIGMA * a.double().norm().item() / math.sqrt(32)
    for lam, m in zip(report.lengths, row.measured):
        assert abs(m) < 5 * lam * bound
    assert row.err["glass"] < row.err["hessian"] < row.err["linear"]
    assert row.best == "glass"
    assert row.terms["glass"] > row.terms["hessian"] > 0
    # the gap is not noise: the glass term at length 1 is many standard errors
    assert row.terms["glass"] > 10 * row.stderr[-1]


def test_hessian_and_glass_models_agree_on_a_quadratic_whose_curvature_model_b_captures():
    a = _values(0.5, 4.0, 4, dtype=torch.float64)
    b = _values(-1, 1, 5, dtype=torch.float64)
    x = torch.nn.Parameter(_values(-2, 2, 6, dtype=torch.float64))
    loss = lambda: (0.5 * a * (x - b) ** 2).sum()  # noqa: E731
    opt = _train(loss, [x], 30, lr=0.05)
    report = probe(opt, loss, lengths=(0.5, 1.0, 2.0, 4.0), draws=4)
    row = report.row("all")
    assert row.terms["glass"] < 1e-6 * row.terms["hessian"]
    assert row.err["glass"] == pytest.approx(row.err["hessian"], rel=1e-5)
    assert row.r2["glass"] == pytest.approx(row.r2["hessian"], rel=1e-5)
    # measured - (b) = lam * (gradient mismatch + the draws' mean of sum a s z): a line through 0
    slopes = [(m - p) / lam for lam, m, p in zip(report.lengths, row.measured, row.predicted["hessian"])]
    assert max(slopes) - min(slopes) < 1e-9 * row.decrease
    assert row.r2["hessian"] > 0.9


def test_per_layer_rows_add_up_on_a_separable_loss_and_parameters_are_restored():
    g = torch.Generator().manual_seed(7)
    u = torch.nn.Parameter(torch.randn(30, generator=g, dtype=torch.float64))
    v = torch.nn.Parameter(torch.randn(20, generator=g, dtype=torch.float64))
    loss = lambda: (u.abs() * 2).sum() + ((v - 1) ** 2).sum() + (u.sin() ** 2).sum()  # noqa: E731
    opt = _train(loss, [u, v], 25, lr=0.05)
    before = [u.detach().clone(), v.detach().clone()] + [t.clone() for s in opt.state.values() for t in s.values()]
    report = probe(opt, loss, names=[("u", u), ("v", v)], draws=3)
    after = [u.detach(), v.detach()] + [t for s in opt.state.values() for t in s.values()]
    assert all(torch.equal(x, y) for x, y in zip(before, after))
    assert [r.name for r in report.rows] == ["all", "u", "v"]
    rows = {r.name: r for r in report.rows}
    for j in range(len(report.lengths)):
        parts = rows["u"].measured[j] + rows["v"].measured[j]
        assert rows["all"].measured[j] == pytest.approx(parts, rel=1e-9, abs=1e-12)
        for m in MODELS:
            assert rows["all"].predicted[m][j] == pytest.approx(
                rows["u"].predicted[m][j] + rows["v"].predicted[m][j], rel=1e-12)
    assert rows["all"].numel == 50
    again = probe(opt, loss, names=[("u", u), ("v", v)], draws=3)
    assert again.rows[0].measured == report.rows[0].measured  # seeded: reproducible


def test_model_batches_form_modules_table_and_flat_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 2))
    g = torch.Generator().manual_seed(8)
    batches = [(torch.randn(32, 5, generator=g), torch.randint(0, 2, (32,), generator=g)) for _ in range(2)]
    loss_fn = torch.nn.functional.cross_entropy
    opt = _train(lambda: held_loss(model, loss_fn, batches)(), model.named_parameters(), 12, lr=0.05)
    report = probe(opt, model=model, loss_fn=loss_fn, batches=batches, layers="module", draws=2)
    assert isinstance(report, ProbeReport)
    assert [r.name for r in report.rows] == ["all", "0", "2"]
    assert model.training  # held_loss evaluates in eval mode and puts the mode back
    text = str(report)
    assert text.splitlines()[0].startswith("layer") and "\n0 " in text and "\n2 " in text
    flat = report.to_dict()
    assert all(type(v) is float for v in flat.values())
    assert {"probe/all/err_glass", "probe/2/r2_linear", "probe/0/glass_term", "probe/all/measured_1"} <= set(flat)
    assert [r.name for r in probe(opt, model=model, loss_fn=loss_fn, batches=batches, layers="none",
                                   draws=1).rows] == ["all"]


def test_half_precision_parameters_probe_from_the_float32_centre():
    x = torch.nn.Parameter(_values(-1, 1, 9, n=64).to(torch.bfloat16))
    loss = lambda: (x.float() ** 2).sum()  # noqa: E731
    opt = _train(loss, [x], 12, lr=0.05)
    held = x.detach().clone()
    row = probe(opt, loss, draws=2).row("all")
    assert torch.equal(x.detach(), held)
    assert row.decrease > 0 and all(math.isfinite(m) for m in row.measured)


@pytest.mark.parametrize("kwargs,message", [
    ({"lengths": ()}, "Invalid lengths: \\[\\]"),
    ({"lengths": (1.0, -1.0)}, "Invalid lengths"),
    ({"lengths": "ab"}, "Invalid lengths: 'ab'"),
    ({"draws": 0}, "Invalid draws: 0"),
    ({"draws": 2.0}, "Invalid draws: 2.0"),
    ({"layers": "block"}, "Invalid layers: 'block'"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    x = torch.nn.Parameter(torch.ones(3))
    opt = _train(lambda: (x**2).sum(), [x], 2, lr=0.1)
    with pytest.raises(ValueError, match=message):
        probe(opt, lambda: (x**2).sum(), **kwargs)


def test_bad_loss_and_optimizer_arguments():
    x = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="Invalid optimizer: it holds no state yet"):
        fresh = torch.nn.Parameter(torch.ones(2))
        probe(Alice([fresh], lr=0.1), lambda: fresh.sum())
    opt = _train(lambda: (x**2).sum(), [x], 2, lr=0.1)
    with pytest.raises(ValueError, match="Invalid loss: None"):
        probe(opt)
    with pytest.raises(ValueError, match="Invalid loss: 3"):
        probe(opt, 3)
    with pytest.raises(ValueError, match="Invalid optimizer: SGD"):
        probe(torch.optim.SGD([x], lr=0.1), lambda: x.sum())
    with pytest.raises(ValueError, match=r"Invalid batches\[0\]"):
        held_loss(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss, [torch.ones(3)])


@pytest.mark.parametrize("bad,message", [
    (lambda out, y: (out - y).pow(2).reshape(-1), r"returned a tensor of shape \(16,\)"),
    (lambda out, y: "loss", "returned str 'loss'"),
    (lambda out, y: None, "returned NoneType None"),
])
def test_a_loss_that_is_not_one_number_is_refused_by_name(bad, message):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    opt = _train(lambda: torch.nn.functional.mse_loss(model(x), y), model.parameters(), 2, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"Invalid loss_fn\(model\(x\), y\): " + message):
        probe(opt, model=model, loss_fn=bad, batches=[(x, y)], layers="none")
    with pytest.raises(ValueError, match="Invalid loss: " + message):
        probe(opt, lambda: bad(model(x), y), layers="none")
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def _closure_free(steps: int, probe_after: int | None = None):
    """A ReLU net trained closure-free for ``steps`` steps, probed (in train mode) after
    ``probe_after`` of them, else after eval() at the end; returns the report, the
    parameters after the last step (train mode) and the optimizer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = Alice(model.parameters(), lr=0.05, closure_free=True, seed=1)
    read = lambda: probe(opt, model=model, loss_fn=torch.nn.functional.mse_loss,  # noqa: E731
                         batches=[(x, y)], layers="none")
    report = None
    for n in range(steps):
        if n == probe_after:
            point = [p.detach().clone() for p in model.parameters()]
            assert opt.training
            report = read()
            assert opt.training and all(torch.equal(a, p) for a, p in zip(point, model.parameters()))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    params = [p.detach().clone() for p in model.parameters()]
    if probe_after is None:
        opt.eval()
        assert not opt.training
        report = read()
    return report, params, opt


def test_closure_free_probe_in_train_mode_measures_around_mu():
    # in train mode the parameters hold the evaluation point, sigma away from mu: the probe
    # reads what it reads after eval(), leaves the point in place and changes no later step
    in_train, params, _ = _closure_free(14, probe_after=9)
    at_mu, _, _ = _closure_free(9)
    _, plain, _ = _closure_free(14)
    assert in_train.rows[0].measured == at_mu.rows[0].measured
    assert in_train.rows[0].err == at_mu.rows[0].err
    assert all(torch.equal(a, b) for a, b in zip(params, plain))
