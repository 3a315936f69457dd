"""Parity of ``alice.Alice`` with the float64 oracle in ``reference.py``.

The objective is separable and nonsmooth: per coordinate
``0.5 * a * (x - c)^2 + sum_k b_k * relu(x - k_k)`` with kinks within a few
``lr`` of the start, so the glass term is active. Being separable, every
coordinate's trajectory is independent of the Rademacher signs (a flipped
sign swaps ``gp`` and ``gm``, leaving ``|h|``, ``h^2`` and ``gbar`` as they
were), so the oracle uses all +1 signs and must agree with Alice to rounding.
"""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alice import Alice
from configs import CONFIGS, FUSED_CONFIGS, LR, PATHS, Config
from helpers import closure_of, flat
from reference import ReferenceAlice

STEPS = 200
SHAPES = [(3, 4), (7,), (2, 2, 2), (1,), (0, 3)]
KINKS = 3
RTOL, ATOL = 1e-10, 1e-12
STATE_KEYS = ("nu", "G", "V", "H", "R")


def _state_of(opt, p):
    """The spec's state of ``p``; Alice stores the look-ahead as its offset from ``mu``."""
    state = dict(opt.state[p])
    state["nu"] = p.detach() + state["offset"]
    return state


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)

    size = sum(math.prod(s) for s in SHAPES)
    x0 = uniform(size, -1, 1)
    a = uniform(size, 0.5, 2.0)
    c = x0 + uniform(size, -5 * LR, 5 * LR)
    kinks = x0.unsqueeze(-1) + uniform((size, KINKS), -3 * LR, 3 * LR)
    slopes = uniform((size, KINKS), -0.03, 0.03)
    x0_list = [t.reshape(s) for t, s in zip(x0.split([math.prod(s) for s in SHAPES]), SHAPES)]
    return x0_list, (a, c, kinks, slopes)


X0, (A, C, KINK_AT, SLOPE) = _problem()


def objective(xs):
    x = torch.cat([t.reshape(-1) for t in xs])
    return (0.5 * A * (x - C) ** 2).sum() + (SLOPE * torch.relu(x.unsqueeze(-1) - KINK_AT)).sum()


def gradient(points):
    xs = [p.detach().clone().requires_grad_(True) for p in points]
    return list(torch.autograd.grad(objective(xs), xs))


@functools.lru_cache(maxsize=None)
def run_reference(case, steps=STEPS):
    ref = ReferenceAlice(X0, lr=LR, **case.kwargs)
    trajectory = []
    for n in range(1, steps + 1):
        ref.step(gradient, lr=case.lr_at.get(n))
        trajectory.append(flat(ref.mu))
    return torch.stack(trajectory), ref


def run_alice(case, path, steps=STEPS):
    """Returns (params after each step, closure calls per step, params, optimizer)."""
    params = [torch.nn.Parameter(x.clone()) for x in X0]
    opt = Alice(params, lr=LR, seed=0, **case.kwargs, **path)
    calls = []
    closure = closure_of(opt, lambda: objective(params), counter=calls)
    trajectory, counts = [], []
    for n in range(1, steps + 1):
        if n in case.lr_at:
            for group in opt.param_groups:
                group["lr"] = case.lr_at[n]
        before = len(calls)
        opt.step(closure)
        counts.append(len(calls) - before)
        trajectory.append(flat(params))
    return torch.stack(trajectory), counts, params, opt


def _assert_trajectories_match(got, want):
    off = (~torch.isclose(got, want, rtol=RTOL, atol=ATOL)).any(dim=1).nonzero().flatten().tolist()
    if off:
        first = off[0]
        pytest.fail(f"parameters diverge from the reference first at step {first + 1} "
                    f"({len(off)} of {len(got)} steps off); max abs diff there "
                    f"{(got[first] - want[first]).abs().max().item():.3e}")


def _compile_available():
    return hasattr(torch, "compile") and torch._dynamo.is_dynamo_supported()


PARAMS = [pytest.param(case, path, id=f"{case.desc}-{path}")
          for case in CONFIGS for path in ("foreach_default", "single_tensor")]
PARAMS += [pytest.param(case, "fused", id=f"{case.desc}-fused",
                        marks=pytest.mark.skipif(not _compile_available(),
                                                 reason="torch.compile is unavailable"))
           for case in CONFIGS if case.desc in FUSED_CONFIGS]


@pytest.mark.parametrize("case,path", PARAMS)
def test_parity_with_reference(case, path):
    want_traj, ref = run_reference(case)
    got_traj, _, params, opt = run_alice(case, PATHS[path])

    _assert_trajectories_match(got_traj, want_traj)
    for i, p in enumerate(params):
        assert p.shape == SHAPES[i] and p.dtype == torch.float64
        torch.testing.assert_close(p.detach(), ref.mu[i], rtol=RTOL, atol=ATOL)
        state = _state_of(opt, p)
        for key in STATE_KEYS:
            torch.testing.assert_close(state[key], getattr(ref, key)[i], rtol=RTOL, atol=ATOL,
                                       msg=lambda m, key=key, i=i: f"state {key!r} of tensor {i}: {m}")


@pytest.mark.parametrize("path", ["foreach_default", "single_tensor"])
def test_warmup_is_exactly_ten_steps_at_beta1_0_9(path):
    steps = 16
    traj, counts, _, _ = run_alice(Config("default", dict(betas=(0.9, 0.999), quick_steps=3)),
                                   PATHS[path], steps=steps)
    start = flat(X0)
    for n in range(10):
        assert torch.equal(traj[n], start), f"parameters moved during warm-up step {n + 1}"
    assert (traj[10] != start).all(), "some parameter did not move at step 11"
    # steps 1-10 sample (warm-up); then step n samples when n % 4 == 0
    assert counts == [3] * 10 + [1, 3, 1, 1, 1, 3]


@st.composite
def configs(draw):
    """Any valid combination of the spec's options."""
    quick = draw(st.integers(0, 5))
    beta2 = draw(st.floats(1 - 0.9 / (quick + 1), 0.9999))
    limit = draw(st.sampled_from(["fixed", "sgdm", "adam"]))
    unit = {"fixed": LR, "sgdm": 1.0, "adam": LR}[limit]
    lr_min = draw(st.floats(0, 0.5)) * unit
    hess = draw(st.sampled_from(["zero", "abs", "rms"]))
    default_max = lr_min <= 2 * LR and draw(st.booleans())  # None means 2 * lr
    return dict(
        betas=(draw(st.floats(0.5, 0.95)), beta2), quick_steps=quick, limit_method=limit,
        lr_min=lr_min, lr_max=None if default_max else lr_min + draw(st.floats(0.5, 3.0)) * unit,
        hess_comp=hess, grad_glass=hess == "zero" or draw(st.booleans()),
        w1=draw(st.sampled_from([0.0, 0.003])), w2=draw(st.sampled_from([0.0, 0.2])),
        phi=draw(st.one_of(st.none(), st.floats(0.05, 1.95))), omega=draw(st.floats(0.1, 2.0)),
        scale_bounds_with_lr=draw(st.booleans()), weight_decay=draw(st.sampled_from([0.0, 0.5])),
    )


@settings(max_examples=25, deadline=None)
@given(kwargs=configs(), lr_change=st.sampled_from([None, 0.5, 2.0]))
def test_random_configurations_match_the_reference(kwargs, lr_change):
    case = Config("random", kwargs, lr_at={} if lr_change is None else {30: LR * lr_change})
    want, _ = run_reference(case, steps=60)
    got, _, _, _ = run_alice(case, PATHS["foreach_default"], steps=60)
    _assert_trajectories_match(got, want)


def test_param_groups_follow_their_own_settings():
    """Two groups with different settings; each matches a reference run on its own
    coordinates (the objective is separable). The schedule stays the constructor's."""
    groups = {
        (0, 2): dict(lr=LR, hess_comp="rms", w2=0.2, weight_decay=0.4),
        (1, 3): dict(lr=LR / 2, limit_method="fixed", lr_min=1e-3, betas=(0.9, 0.99), phi=0.5, omega=0.8),
    }
    params = [torch.nn.Parameter(x.clone()) for x in X0]
    opt = Alice([{"params": [params[i] for i in idx], **kw} for idx, kw in groups.items()], lr=LR, seed=0)
    refs = {idx: ReferenceAlice([X0[i] for i in idx], **kw) for idx, kw in groups.items()}

    def group_gradient(idx):
        def grad_fn(points):  # the other coordinates do not matter: separable
            full = [x.clone() for x in X0]
            for i, point in zip(idx, points):
                full[i] = point
            return [gradient(full)[i] for i in idx]

        return grad_fn

    closure = closure_of(opt, lambda: objective(params))
    for _ in range(STEPS):
        opt.step(closure)
        for idx, ref in refs.items():
            ref.step(group_gradient(idx))
    for idx, ref in refs.items():
        for i, want in zip(idx, ref.mu):
            torch.testing.assert_close(params[i].detach(), want, rtol=RTOL, atol=ATOL)
