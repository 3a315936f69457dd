"""Failed and skipped steps change nothing: a closure that raises, a non-finite loss or
gradient at any of the three evaluations (skipped on the device, warned about once), a
finite gradient too large to square, the model's buffers. (Misuse refused before a step:
``test_errors.py``; wrong checkpoints: ``test_checkpoint.py``.)"""

import copy
import warnings

import pytest
import torch
from torch import nn

from alice import Alice
from helpers import Net, all_equal, closure_of, copies, flat, mse, quadratic, regression, same_state, train


def problem():
    return regression(4, 8, 1, rows=16)


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_a_closure_that_raises_once_leaves_everything_as_before(failing_call):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, quick_steps=1)
    reference = copy.deepcopy((model, opt))
    train(model, opt, x, y, 2)
    train(*reference, x, y, 2)
    calls = []

    def failing():
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.nn.functional.dropout(x, 0.5)), y).backward()
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("boom")
        return torch.tensor(0.0)

    before, rng = flat(model).clone(), torch.get_rng_state()
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(failing)  # a sampling step (warm-up): three calls
    assert torch.equal(flat(model), before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert opt.calls == 2
    train(model, opt, x, y, 12)  # the next ordinary steps run, and as if nothing had happened
    train(*reference, x, y, 12)
    assert torch.equal(flat(model), flat(reference[0]))
    assert opt.state_dict()["state"][0]["G"].equal(reference[1].state_dict()["state"][0]["G"])


@pytest.mark.parametrize("bad_eval", [0, 1, 2], ids=["at nu+d", "at nu-d", "at nu"])
@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_steps_change_nothing(bad_eval, kind):
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    calls = []
    poison = {"on": False}

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if poison["on"] and len(calls) - poison["start"] == bad_eval + 1:
            loss = loss * float("nan") if kind == "loss" else loss + model.weight.sum() * float("inf")
        loss.backward()
        return loss

    for _ in range(11):  # step 12 is a sampling step (12 % 4 == 0)
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    params = copies(model)
    poison.update(on=True, start=len(calls))
    opt.step(closure)
    with pytest.warns(RuntimeWarning, match="skipped 1 step"):  # decided on the device, told when read
        assert opt.skipped_steps == 1 and opt.steps == 11
    assert all_equal(params, model.parameters())
    assert same_state(saved["state"], opt.state_dict()["state"])
    poison["on"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)  # training goes on, and the warning is not repeated
    assert opt.steps == 12


def test_warning_is_issued_once():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)

    closure = closure_of(opt, lambda: mse(model, x, y) * float("inf"))
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            opt.step(closure)
            opt.skipped_steps
    assert len([w for w in record if "skipped" in str(w.message)]) == 1
    assert opt.skipped_steps == 3 and opt.steps == 0


def test_skipped_step_restores_buffers_when_model_is_given():
    torch.manual_seed(0)
    model = Net(p=0.0)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, model=model)
    buffers = copy.deepcopy(list(model.buffers()))

    closure = closure_of(opt, lambda: mse(model, x * float("nan"), y))
    opt.step(closure)
    with pytest.warns(RuntimeWarning):
        assert opt.skipped_steps == 1
    assert all_equal(buffers, model.buffers())


def test_a_huge_finite_gradient_skips_the_step_and_keeps_the_state_finite():
    p = nn.Parameter(torch.tensor([0.5, -0.25]))
    opt = Alice([p], lr=1e-2, seed=0)
    scale = {"value": 1.0}

    closure = closure_of(opt, lambda: (scale["value"] * p).sum())  # gradient = scale: 1e30 squares to inf in float32

    for _ in range(12):
        opt.step(closure)
    before = p.detach().clone()
    scale["value"] = 1e30
    opt.step(closure)
    with pytest.warns(RuntimeWarning, match="skipped 1 step"):
        assert opt.skipped_steps == 1
    assert torch.equal(p.detach(), before)
    assert all(torch.isfinite(t).all() for t in opt.state[p].values())
    scale["value"] = 1.0
    opt.step(closure)
    assert opt.steps == 12 + 1 and torch.isfinite(p).all()
