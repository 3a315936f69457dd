"""Properties of the elementwise formulas (alice._math), checked with hypothesis."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alice import _math, _scalars as _schedule

pos = st.floats(1e-6, 1e3)
nonneg = st.floats(0.0, 1e3)
C = math.sqrt(2 / (3 * math.pi))


def model(t, g_abs, h, rho):
    """The expected-loss model minimised by the step."""
    return -g_abs * t + 0.5 * h * t * t + C * math.sqrt(rho) * t**1.5


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(g_abs=pos, h=nonneg, rho=nonneg)
def test_optimal_step_minimises_the_expected_loss_model(g_abs, h, rho):
    assume(h + rho > 1e-6)  # with no curvature at all the model has no minimiser
    t = _math.optimal_step(t64(g_abs), t64(rho), t64(h), 0.0).item()
    assert t > 0
    # stationary: m'(t) = -|g| + h t + 1.5 c sqrt(rho t) = 0
    slope = -g_abs + h * t + 1.5 * C * math.sqrt(rho * t)
    assert abs(slope) <= 1e-9 * (g_abs + h * t + 1.5 * C * math.sqrt(rho * t))
    for factor in (0.9, 0.99, 1.01, 1.1):
        assert model(t, g_abs, h, rho) <= model(factor * t, g_abs, h, rho) + 1e-12 * abs(model(t, g_abs, h, rho))


@given(g_abs=pos)
def test_pure_glass_and_pure_hessian_limits(g_abs):
    h = 2.5
    assert math.isclose(_math.optimal_step(t64(g_abs), 0.0, t64(h), 0.0).item(), g_abs / h, rel_tol=1e-12)
    rho = 3.0  # h = 0: |g| = 1.5 c sqrt(rho t)  =>  t = (|g| / (1.5 c))^2 / rho
    expected = (g_abs / (1.5 * C)) ** 2 / rho
    assert math.isclose(_math.optimal_step(t64(g_abs), t64(rho), 0.0, 0.0).item(), expected, rel_tol=1e-12)


def test_no_curvature_gives_the_eps_guarded_step():
    assert _math.optimal_step(t64(2.0), 0.0, 0.0, 1e-8).item() == pytest.approx(2.0 / 1e-8)


@given(step=st.floats(-1e6, 1e6), lo=st.floats(0, 10), width=st.floats(0, 10))
def test_bound_clips_to_the_interval(step, lo, width):
    hi = lo + width
    out = _math.bound(t64(step), t64(lo), t64(hi)).item()
    assert lo <= out <= hi
    if lo <= step < hi:
        assert out == step


def test_bound_nan_and_edges():
    out = _math.bound(t64([math.nan, 5.0, 1.0, -1.0, math.inf]), 0.5, 5.0)
    assert out.tolist() == [5.0, 5.0, 1.0, 0.5, 5.0]  # NaN and "not below the upper" -> upper


@given(a=st.floats(-1e3, 1e3), x=st.floats(-1e3, 1e3), b=st.floats(0, 1))
def test_average_rule(a, x, b):
    assert _math.average(t64(a), t64(x), b).item() == x + b * (a - x)
    assert _math.average(t64(a), t64(x), 0.0).item() == x


@given(gp=st.floats(-1e3, 1e3), gm=st.floats(-1e3, 1e3), g0=st.floats(-1e3, 1e3), sigma=pos, w2=nonneg)
def test_samples_are_symmetric_in_the_sign_of_the_perturbation(gp, gm, g0, sigma, w2):
    for comp in ("abs", "rms"):
        a = _math.hessian_sample(t64(gp), t64(gm), sigma, w2, comp)
        b = _math.hessian_sample(t64(gm), t64(gp), sigma, w2, comp)
        assert a.item() == b.item() >= w2 * (w2 if comp == "rms" else 1)
    h = (gp - gm) / (2 * sigma)
    assert math.isclose(_math.hessian_sample(t64(gp), t64(gm), sigma, w2, "rms").item(), h * h + w2 * w2, rel_tol=1e-12)
    rho = _math.glass_sample(t64(gp), t64(gm), t64(g0), sigma).item()
    assert rho == _math.glass_sample(t64(gm), t64(gp), t64(g0), sigma).item() >= 0
    assert math.isclose(rho, 2 * ((gp + gm) / 2 - g0) ** 2 / sigma, rel_tol=1e-12, abs_tol=1e-300)


def test_regularized_grad_sign_convention():
    nu = t64([-2.0, 0.0, 3.0])
    g = _math.regularized_grad(torch.zeros(3, dtype=torch.float64), nu, 0.5, 0.1)
    assert g.tolist() == [-0.5 - 0.2, 0.5, 0.5 + 0.30000000000000004]  # sign(0) counts as +1


@settings(max_examples=200, deadline=None)
@given(
    G=st.floats(-10, 10).filter(lambda v: v != 0), V=nonneg, H=nonneg, R=nonneg,
    comp=st.sampled_from(_schedule.HESS_COMPS), limit=st.sampled_from(_schedule.LIMIT_METHODS),
    tau1=st.floats(0, 1e-2), width=st.floats(0, 1e-2), glass=st.booleans(),
)
def test_signed_step_descends_within_bounds(G, V, H, R, comp, limit, tau1, width, glass):
    tau2 = tau1 + width
    s = _math.signed_step(
        t64(G), t64(V), t64(H), t64(R), eps=1e-8, tau1=tau1, tau2=tau2, hess_comp=comp,
        grad_glass=glass, limit_method=limit,
    ).item()
    scale = {"fixed": 1.0, "sgdm": abs(G), "adam": abs(G) / (math.sqrt(V) + 1e-8)}[limit]
    assert s * G <= 0
    assert tau1 * scale * (1 - 1e-12) <= abs(s) <= tau2 * scale * (1 + 1e-12)
