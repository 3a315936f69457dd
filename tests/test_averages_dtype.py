"""``averages_dtype=torch.bfloat16`` (issue 25): the averages ``G, V, H, R`` kept in
bfloat16 with stochastic rounding: 8 bytes per element less, unbiased averages,
reproducible runs and resumes, and training close to float32 state."""

import copy

import pytest
import torch
from torch import nn

from alice import Alice
from helpers import all_equal, closure_for, mse, regression, same_state, saved, train

AVERAGES = ("G", "V", "H", "R")


def state_bytes_per_element(opt, model):
    numel = sum(p.numel() for p in model.parameters())
    views = [v for entry in opt.state.values() for k, v in entry.items() if k != "step"]
    return sum(v.numel() * v.element_size() for v in views) / numel


@pytest.mark.parametrize("dtype, want", [(None, 20), (torch.bfloat16, 12)], ids=["float32", "bfloat16"])
def test_state_bytes_per_element(dtype, want):
    model, x, y = regression(6, 8, 1, rows=16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, averages_dtype=dtype)
    train(model, opt, x, y, steps=2)
    assert state_bytes_per_element(opt, model) == want
    entry = opt.state[next(model.parameters())]
    assert entry["offset"].dtype == torch.float32
    assert {entry[k].dtype for k in AVERAGES} == {dtype or torch.float32}


def test_half_precision_parameters_keep_float32_centre_and_offset_and_float64_its_averages():
    model, x, y = regression(6, 8, 1, rows=16)
    model = model.to(torch.bfloat16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, averages_dtype=torch.bfloat16)
    train(model, opt, x.bfloat16(), y.bfloat16(), steps=2)
    entry = opt.state[next(model.parameters())]
    assert entry["mu"].dtype == entry["offset"].dtype == torch.float32
    assert entry["G"].dtype == torch.bfloat16
    model64 = regression(6, 8, 1, rows=16)[0].double()  # float64 state is not narrowed
    opt64 = Alice(model64.parameters(), lr=1e-2, seed=0, averages_dtype=torch.bfloat16)
    assert opt64.state[next(model64.parameters())]["V"].dtype == torch.float64


@pytest.mark.parametrize("value", [torch.float16, "bf16", torch.int8])
def test_other_dtypes_are_refused(value):
    with pytest.raises(ValueError, match="Invalid averages_dtype"):
        Alice([nn.Parameter(torch.zeros(2))], averages_dtype=value)


def test_rounding_is_unbiased_where_rounding_to_nearest_would_freeze_the_average():
    """A gradient that grows by 0.2% per step, the same for every element: float32 ``V``
    follows it; round-to-nearest in bfloat16 would freeze (a change of 0.1% of ``V`` per
    step is below half a bfloat16 spacing); stochastic rounding keeps the mean."""
    p = nn.Parameter(torch.zeros(4096))
    steps, b2 = 400, 0.999
    runs = {}
    for dtype in (None, torch.bfloat16):
        q = nn.Parameter(p.detach().clone())
        opt = Alice([q], lr=1e-6, seed=0, averages_dtype=dtype)
        t = [0]

        def closure(q=q):
            t[0] += 1
            q.grad = torch.full_like(q, 1.0 + 0.002 * t[0])
            return torch.zeros(())

        for _ in range(steps):
            opt.step(closure)
        runs[dtype] = opt.state[q]["V"].float()
    exact = runs[None]
    ratio = runs[torch.bfloat16] / exact
    assert abs(ratio.mean().item() - 1) < 1e-3  # unbiased: the mean over 4096 elements
    # per element the rounding errors add up as a walk damped by beta2 (a few percent here;
    # each rounding is at most one spacing, 0.8%): the documented error of this option
    assert 0.01 < ratio.std().item() < 0.05
    # round-to-nearest, simulated on a gradient growing as this one does, lags far behind
    exact_v, nearest_v = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.bfloat16)
    for n in range(1, steps + 1):
        g2, beta = (1.0 + 0.003 * n) ** 2, min(b2, (n - 1) / n)
        exact_v = g2 + beta * (exact_v - g2)
        nearest_v = (g2 + beta * (nearest_v.float() - g2)).to(torch.bfloat16)
    assert abs(nearest_v.double() / exact_v - 1) > 0.02


def test_runs_and_resumes_are_reproducible():
    def fresh():
        model, x, y = regression(6, 16, 1, rows=32, seed=1)
        return model, x, y, Alice(model.parameters(), lr=1e-2, seed=3, averages_dtype=torch.bfloat16)

    model, x, y, opt = fresh()
    train(model, opt, x, y, steps=7)
    buffer = saved(model, opt)
    twin_model, _, _, twin = fresh()
    train(twin_model, twin, x, y, steps=7)
    assert all_equal(model.parameters(), twin_model.parameters())
    assert same_state(opt.state_dict()["state"], twin.state_dict()["state"])
    train(model, opt, x, y, steps=9)
    loaded_model, _, _, loaded = fresh()
    checkpoint = torch.load(buffer, weights_only=True)
    loaded_model.load_state_dict(checkpoint["model"])
    loaded.load_state_dict(checkpoint["opt"])
    assert loaded.state[next(loaded_model.parameters())]["G"].dtype == torch.bfloat16
    train(loaded_model, loaded, x, y, steps=9)
    assert all_equal(model.parameters(), loaded_model.parameters())
    assert same_state(opt.state_dict()["state"], loaded.state_dict()["state"])
    clone = copy.deepcopy(opt)
    assert clone.averages_dtype == torch.bfloat16
    assert clone.state[next(iter(clone.state))]["V"].dtype == torch.bfloat16


def test_a_float32_checkpoint_loads_into_bfloat16_averages_and_back():
    model, x, y = regression(6, 8, 1, rows=16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    train(model, opt, x, y, steps=5)
    narrow = Alice(model.parameters(), lr=1e-2, seed=0, averages_dtype=torch.bfloat16)
    narrow.load_state_dict(opt.state_dict())
    p = next(model.parameters())
    assert torch.equal(narrow.state[p]["V"], opt.state[p]["V"].bfloat16())
    wide = Alice(model.parameters(), lr=1e-2, seed=0)
    wide.load_state_dict(narrow.state_dict())
    assert torch.equal(wide.state[p]["V"], narrow.state[p]["V"].float())


@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
def test_trains_as_float32_state_does_on_a_regression(fused):
    losses = {}
    for dtype in (None, torch.bfloat16):
        model, x, y = regression(6, 32, 1, rows=64, seed=0)
        opt = Alice(model.parameters(), lr=1e-2, seed=0, averages_dtype=dtype, fused=fused)
        closure = closure_for(opt, model, x, y)
        first = mse(model, x, y).item()
        for _ in range(200):
            opt.step(closure)
        losses[dtype] = mse(model, x, y).item()
    assert losses[None] < 0.6 * first
    assert abs(losses[torch.bfloat16] / losses[None] - 1) < 0.01
