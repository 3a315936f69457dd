"""The closure-free mode: loops that call ``step()`` themselves (issue 14, item 2)."""

import copy

import pytest
import torch
from torch import nn

from alice import Alice, ClosureError, LoopError
from helpers import all_equal, closure_for, copies, mse as loss_of, regression, same_state, train_closure_free


def problem(seed=0):
    return regression(5, 16, 1, rows=40, seed=seed)


def test_on_one_batch_closure_free_is_exact_alice():
    """With the same batch at every call, the three calls of a sampling step see
    exactly the closure's three evaluations: the trajectories agree bit for bit."""
    model, x, y = problem()
    exact = Alice(model.parameters(), lr=1e-2, seed=3)
    closure = closure_for(exact, model, x, y)

    free_model = copy.deepcopy(model)
    free = Alice(free_model.parameters(), lr=1e-2, seed=3, closure_free=True)
    for _ in range(22):
        exact.step(closure)
        while True:  # one Alice step: 3 calls when it samples, else 1
            free.zero_grad()
            loss_of(free_model, x, y).backward()
            phase = free.evaluation
            free.step()
            if phase == "center":
                break
    free.eval()
    assert free.calls == exact.calls == 22
    assert all_equal(model.parameters(), free_model.parameters())


def test_phases_train_eval_and_the_points_held():
    model, x, y = problem()
    mu = copies(model)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True)
    assert opt.evaluation == "plus"  # warm-up: a sampling step; the parameters sit at nu + sigma z
    plus = copies(model)
    assert all(torch.allclose((a - m).abs(), torch.full_like(m, 1e-2)) for a, m in zip(plus, mu))
    opt.eval()
    assert opt.evaluation is None and all(torch.equal(p, m) for p, m in zip(model.parameters(), mu))
    with pytest.raises(LoopError, match="eval mode"):
        opt.step()
    opt.train()
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), plus))
    loss_of(model, x, y).backward()
    opt.step()
    assert opt.evaluation == "minus"
    assert all(torch.allclose(p - m, m - a) for p, m, a in zip(model.parameters(), mu, plus))


def test_accumulation_by_the_loop_is_the_sum_of_the_micro_batches():
    model, x, y = problem()
    whole = copy.deepcopy(model)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True)
    opt_whole = Alice(whole.parameters(), lr=1e-2, seed=0, closure_free=True)
    for _ in range(15):
        opt.zero_grad()
        for xb, yb in zip(x.split(20), y.split(20)):
            (nn.functional.mse_loss(model(xb), yb, reduction="sum") / 40).backward()
        opt.step()
        train_closure_free(whole, opt_whole, x, y, 1)
    for a, b in zip(model.parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_scaler_skips_leave_the_phase_and_state():
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def scaled_calls(n, loss=lambda: loss_of(model, x, y)):
        for _ in range(n):
            opt.zero_grad()
            scaler.scale(loss()).backward()
            scaler.step(opt)
            scaler.update()

    scaled_calls(7)
    phase, calls = opt.evaluation, opt.calls
    before = copies(model)
    state = copy.deepcopy(opt.state_dict())
    scaled_calls(1, lambda: loss_of(model, x, y) * float("inf"))  # GradScaler finds inf: no step()
    assert opt.evaluation == phase and opt.calls == calls
    assert all_equal(before, model.parameters())
    assert same_state(state["state"], opt.state_dict()["state"])
    scaled_calls(6)  # and training goes on
    assert opt.calls > calls and opt.skipped_steps == 0


@pytest.mark.parametrize("stop_after", [1, 2, 3], ids=["at minus", "at center", "next step"])
def test_a_checkpoint_inside_a_sampling_step_resumes_exactly(stop_after):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True)

    train_closure_free(model, opt, x, y, 3 * 4 + stop_after)  # four warm-up steps, then part of the fifth
    opt.eval()
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    opt.train()
    train_closure_free(model, opt, x, y, 20)
    opt.eval()

    model2 = problem(seed=5)[0]
    model2.load_state_dict(saved["model"])
    opt2 = Alice(model2.parameters(), lr=1e-2, closure_free=True)
    opt2.load_state_dict(saved["opt"])
    train_closure_free(model2, opt2, x, y, 20)
    opt2.eval()
    assert all_equal(model.parameters(), model2.parameters())


def test_closure_free_warm_up_takes_three_optimizer_steps_per_alice_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Alice([p], lr=1e-2, closure_free=True)
    for _ in range(30):
        opt.zero_grad()
        (p ** 2).sum().backward()
        opt.step()
    assert opt.calls == 10 and opt.steps == 10  # the 10 warm-up steps all sample
