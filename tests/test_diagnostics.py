"""``alice.diagnostics.diagnostics``: statistics of the last step whose values are known in advance.

Each problem is built so that the answer follows from its definition, not from
running the code: a separable quadratic (the Hessian sample is exactly ``a``, the
glass sample is zero), a separable sum of kinks ``a |x - b|`` with the iterate kept
within ``sigma`` of every kink (the Hessian sample is exactly ``a / sigma``, the
glass sample exactly ``2 a^2 / sigma``), a linear loss (no curvature: every step
is set by the upper bound) and a quadratic whose curvature puts half the elements
below the lower bound and half above the upper one.
"""

from __future__ import annotations

import math

import pytest
import torch

from alice import Alice
from alice.diagnostics import KEYS, PER_PARAM_KEYS, diagnostics, param_names
from alice._scalars import sampling_calls
from helpers import train_on

D = 1000


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def train(loss_of, x0, steps, **kwargs):
    """Alice on one parameter tensor ``x`` (initialised to ``x0``) for ``steps`` steps."""
    x = torch.nn.Parameter(x0.clone())
    opt = Alice([x], seed=0, **kwargs)
    train_on(opt, lambda: loss_of(x), steps)
    return x, opt


def spread(lo, hi, n=D, dtype=torch.float32):
    """``n`` values log-spaced in [lo, hi], in a fixed shuffled order."""
    g = torch.Generator().manual_seed(1)
    values = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    return values[torch.randperm(n, generator=g)].to(dtype)


def uniform(lo, hi, n=D, dtype=torch.float32, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).to(dtype)


# -- a smooth quadratic ---------------------------------------------------------------


def test_smooth_quadratic_has_no_glass_and_the_true_curvature():
    # L = sum a/2 (x - b - xi)^2 with a batch offset xi per step (the same in the three
    # evaluations of a step): h = (g+ - g-) / (2 sigma) = a exactly, gbar - g0 = 0 exactly.
    a, b = spread(0.5, 4.0), uniform(-1, 1)
    noise = torch.Generator().manual_seed(3)
    batch = {"xi": torch.zeros(D)}

    def loss_of(x):
        return (0.5 * a * (x - b - batch["xi"]) ** 2).sum()

    x = torch.nn.Parameter(uniform(-2, 2, seed=4))
    opt = Alice([x], lr=0.05, seed=0)
    for _ in range(41):
        batch["xi"] = 0.1 * torch.randn(D, generator=noise)

        def closure():
            opt.zero_grad()
            loss = loss_of(x)
            loss.backward()
            return loss

        opt.step(closure)
    stats = diagnostics(opt)
    assert stats["glass_fraction"] < 0.02  # float32 rounding is the only glass
    assert stats["h_mean"] == pytest.approx(a.double().mean().item(), rel=1e-5)
    torch.testing.assert_close(opt.state[x]["H"], a, rtol=1e-5, atol=0)  # the diagonal, element by element
    assert stats["rho_mean"] < 1e-9 * stats["h_mean"]
    assert stats["g_zero_fraction"] == 0


def test_rms_estimate_of_a_coupled_quadratic_is_the_row_norm_within_sampling_error():
    # L = x^T A x / 2 with off-diagonal coupling: each sample is (A z)_i^2, whose mean over
    # Rademacher z is sum_j A_ij^2; sqrt(H) estimates that row norm, not A_ii.
    n = 200
    g = torch.Generator().manual_seed(5)
    off = 0.05 * torch.randn(n, n, generator=g, dtype=torch.float64)
    A = torch.diag(spread(1.0, 3.0, n, torch.float64)) + (off + off.T) / 2
    x, opt = train(lambda x: 0.5 * x @ A @ x, uniform(-1, 1, n, torch.float64), 201,
                   lr=0.01, hess_comp="rms", quick_steps=1, betas=(0.9, 0.99))
    samples = sampling_calls(201, 10, 1)  # 10 warm-up + 95 later sampling steps
    assert samples == 105
    row_norm = A.norm(dim=1)
    # (A z)_i^2 = A_ii^2 + 2 A_ii e_i + e_i^2 with e_i = sum_{j != i} A_ij z_j: its spread is
    # about 2 A_ii |row i off the diagonal|; the averaged estimate is within a few of those / sqrt(n).
    spread_i = 2 * A.diagonal().abs() * (A - torch.diag(A.diagonal())).norm(dim=1)
    H = opt.state[x]["H"]
    assert torch.all((H - row_norm**2).abs() < 6 * spread_i / math.sqrt(samples) + 1e-12)
    stats = diagnostics(opt)
    assert stats["h_mean"] == pytest.approx(row_norm.mean().item(), rel=2e-3)
    assert stats["h_mean"] > A.diagonal().mean().item() * (1 + 1e-4)  # the coupling shows


# -- a separable kink problem ---------------------------------------------------------------

SIGMA = 0.1


def kink_problem(steps=50, dtype=torch.float32, **kwargs):
    """``sum a |x - b|`` from within 0.3 sigma of the kinks; the fixed bound 0.02 sigma keeps
    the centre within 0.3 sigma + 50 * phi * 0.02 sigma = 0.4 sigma and the look-ahead within
    0.42 sigma of every kink, so the samples at nu +- sigma always straddle it."""
    a, b = spread(0.5, 2.0, dtype=dtype), uniform(-1, 1, dtype=dtype)
    x0 = b + SIGMA * uniform(-0.3, 0.3, seed=6, dtype=dtype)
    options = dict(lr=SIGMA, limit_method="fixed", lr_max=0.02 * SIGMA)
    options.update(kwargs)
    x, opt = train(lambda x: (a * (x - b).abs()).sum(), x0, steps, **options)
    return a, b, x, opt


def test_kinks_make_glass_and_their_hessian_estimate_is_a_over_sigma():
    a, b, x, opt = kink_problem()
    assert ((x.detach() - b).abs() < 0.41 * SIGMA).all()  # the premise of the derivation
    stats = diagnostics(opt)
    a64 = a.double()
    # g+ - g- = a - (-a) = 2a, so |h| = a / sigma; gbar = 0 and g0 = +-a, so rho = 2 a^2 / sigma.
    assert stats["h_mean"] == pytest.approx(a64.mean().item() / SIGMA, rel=1e-5)
    assert stats["rho_mean"] == pytest.approx(2 * (a64**2).mean().item() / SIGMA, rel=1e-5)
    # |G| <= a, so alpha = 3/(4 pi) rho / |G| >= (3 / 2 pi) h, and the glass share of
    # hopt = alpha + h + sqrt(alpha (alpha + 2h)) is at least 1 - 1 / (1 + q + sqrt(q (q + 2))),
    # q = 3 / (2 pi): 0.61.
    q = 3 / (2 * math.pi)
    assert stats["glass_fraction"] > 1 - 1 / (1 + q + math.sqrt(q * (q + 2))) - 1e-6
    # and exactly, from the averaged gradient the step used (float64, written out here):
    G = opt.state[x]["G"].double().abs()
    h, rho, eps = a64 / SIGMA, 2 * a64**2 / SIGMA, 1e-8
    alpha = 3 / (4 * math.pi) * rho / (G + eps)
    hopt = alpha + h + torch.sqrt(alpha * (alpha + 2 * h)) + eps
    assert stats["glass_fraction"] == pytest.approx(((hopt - h - eps) / hopt).mean().item(), rel=1e-4)


def test_glass_only_preset_attributes_all_curvature_to_glass():
    _, _, _, opt = kink_problem(hess_comp="zero")
    assert diagnostics(opt)["glass_fraction"] == pytest.approx(1.0, abs=1e-6)
    _, _, _, opt = kink_problem(grad_glass=False)  # the Hessian alone: no glass share
    stats = diagnostics(opt)
    assert stats["glass_fraction"] == pytest.approx(0.0, abs=1e-6)  # float32 rounding of 1 - h t / |G|
    assert stats["rho_mean"] > 0  # R is still estimated and reported


# -- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lr_max_factor", [None, 3.0])
def test_a_linear_loss_is_all_upper_bound_and_the_adam_ratio_is_lr_max_over_lr(lr_max_factor):
    # L = c . x: H = R = 0, so t = |G| / eps is far above any bound; the step is
    # tau2 |G| / (sqrt V + eps) = (lr_max / lr0) times Adam's lr |G| / (sqrt V + eps).
    lr = 0.01
    c = uniform(-1, 1, dtype=torch.float64)
    kwargs = {} if lr_max_factor is None else {"lr_max": lr_max_factor * lr}
    _, opt = train(lambda x: (c * x).sum(), torch.zeros(D, dtype=torch.float64), 15, lr=lr, **kwargs)
    stats = diagnostics(opt)
    assert stats["clip_high"] == 1.0 and stats["clip_low"] == 0.0
    assert stats["step_ratio_adam"] == pytest.approx(lr_max_factor or 2.0, rel=1e-12)
    assert stats["glass_fraction"] == pytest.approx(0.0, abs=1e-12)  # rounding of 1 - eps t / |G|


def test_curvature_decides_which_bound_binds():
    # limit_method "sgdm": bounds [lr_min, lr_max] * |G| and t = |G| / (a + eps) on a
    # quadratic, so t < lower exactly when 1 / a < lr_min: a = 100 (0.01 < 0.02) is raised to
    # the lower bound, a = 0.001 (1000 >= 1) is cut to the upper one. Half each.
    a = torch.where(torch.arange(D) % 2 == 0, 100.0, 1e-3).double()
    b = uniform(-1, 1, dtype=torch.float64)
    _, opt = train(lambda x: (0.5 * a * (x - b) ** 2).sum(), torch.zeros(D, dtype=torch.float64), 14,
                   lr=0.1, limit_method="sgdm", lr_min=0.02, lr_max=1.0)
    stats = diagnostics(opt, per_param=True)
    assert stats["clip_low"] == 0.5 and stats["clip_high"] == 0.5
    assert stats["0.0/clip_low"] == 0.5


# -- keys, names, counters, cost --------------------------------------------------------------


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _fit(model, opt, steps, every=None, log=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for i in range(steps):
        opt.step(closure)
        if every and (i + 1) % every == 0:
            log.append(diagnostics(opt, per_param=True))


def test_keys_are_documented_floats_and_named_by_parameter():
    model = _mlp()
    opt = Alice(model.named_parameters(), lr=0.03, seed=0)
    _fit(model, opt, 12)
    stats = diagnostics(opt, per_param=True)
    assert all(type(v) is float for v in stats.values())
    overall = {k for k in stats if "/" not in k}
    assert overall == set(KEYS)
    names = [n for n, _ in model.named_parameters()]
    assert {k for k in stats if "/" in k} == {f"{n}/{k}" for n in names for k in PER_PARAM_KEYS}
    assert stats["steps"] == 12 and stats["calls"] == 12 and stats["skipped_steps"] == 0
    assert stats["sampling_steps"] == 10 + 1  # warm-up, then call 12


def test_names_fall_back_to_group_and_index_or_come_from_the_names_argument():
    model = _mlp()
    layers = list(model.parameters())
    opt = Alice([{"params": layers[:2]}, {"params": layers[2:], "lr": 0.01}], lr=0.03, seed=0)
    assert param_names(opt) == [["0.0", "0.1"], ["1.0", "1.1"]]
    assert param_names(opt, model.named_parameters()) == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    _fit(model, opt, 11)
    assert "1.0/glass_fraction" in diagnostics(opt, per_param=True)
    assert "2.bias/clip_high" in diagnostics(opt, per_param=True, names=dict(model.named_parameters()))
    with pytest.raises(ValueError, match="Invalid names: 3"):
        param_names(opt, 3)
    with pytest.raises(ValueError, match="Invalid opt: SGD"):
        diagnostics(torch.optim.SGD(model.parameters(), lr=0.1))


def test_overall_means_weight_tensors_by_their_elements():
    model = _mlp()
    opt = Alice(model.named_parameters(), lr=0.03, seed=0)
    _fit(model, opt, 12)
    stats = diagnostics(opt, per_param=True)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    expected = sum(stats[f"{n}/h_mean"] * k for n, k in sizes.items()) / sum(sizes.values())
    assert stats["h_mean"] == pytest.approx(expected, rel=1e-12)


def test_before_any_step_means_are_nan_and_counters_zero():
    opt = Alice(_mlp().parameters(), lr=0.03)
    stats = diagnostics(opt)
    assert stats["steps"] == 0 and stats["sampling_steps"] == 0
    assert math.isnan(stats["glass_fraction"]) and stats["g_zero_fraction"] == 1.0


def test_reading_changes_nothing_and_training_is_identical_with_or_without_it():
    runs = []
    for every in (None, 3):
        model = _mlp()
        opt = Alice(model.parameters(), lr=0.03, seed=0)
        log = []
        _fit(model, opt, 20, every, log)
        runs.append([p.detach().clone() for p in model.parameters()] +
                    [v.clone() for s in opt.state.values() for v in s.values()])
        if every:
            assert len(log) == 6
    for before, after in zip(*runs):
        assert torch.equal(before, after)


@pytest.mark.parametrize("quick_steps,warmup", [(0, 1), (3, 10), (1, 100), (7, 3)])
def test_sampling_calls_counts_what_the_schedule_says(quick_steps, warmup):
    from alice._scalars import is_sampling_step

    for calls in range(0, 130):
        expected = sum(is_sampling_step(n, warmup, quick_steps) for n in range(1, calls + 1))
        assert sampling_calls(calls, warmup, quick_steps) == expected


def test_skipped_steps_are_counted():
    x = torch.nn.Parameter(torch.ones(3))
    opt = Alice([x], lr=0.1, seed=0)
    with pytest.warns(RuntimeWarning, match="skipped 1 step"):
        for bad in (False, True, False):
            def closure():
                opt.zero_grad()
                loss = (x * (float("nan") if bad else 1.0)).sum()
                loss.backward()
                return loss

            opt.step(closure)
        stats = diagnostics(opt)
    assert (stats["calls"], stats["steps"], stats["skipped_steps"]) == (3, 2, 1)
