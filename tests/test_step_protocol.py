"""The step's protocol (issue 13): gradients in Alice's buffers, gradients and losses it refuses,
parameters edited, frozen, unfrozen or converted between steps, half precision."""

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from alice import Alice, ClosureError, LoopError
from helpers import all_equal, closure_for, closure_of, copies, mse, regression, same_state, train, train_closure_free, train_on


def problem(dtype=torch.float32, seed=0):
    return regression(6, 8, 1, rows=32, seed=seed, dtype=dtype)


def run(zero, steps=17, fused=None):
    """``steps`` steps whose closure zeroes the gradients by the optimizer, the model or not at all."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0, fused=fused)
    closure = closure_for(opt, model, x, y, zero=model if zero == "model" else zero)
    losses = [opt.step(closure).item() for _ in range(steps)]
    return model, opt, losses


def test_gradients_live_in_the_optimizer_buffers_and_any_zeroing_gives_the_same_result():
    runs = {zero: run(zero) for zero in ("optimizer", "model", "none")}
    want = [p.detach() for p in runs["optimizer"][0].parameters()]
    for zero, (model, opt, losses) in runs.items():
        assert all_equal(want, model.parameters()), zero
        assert losses == runs["optimizer"][2]
    model, opt, _ = runs["optimizer"]
    storages = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1  # every p.grad is a tensor over the one flat buffer


@pytest.mark.parametrize("fused", [None, True], ids=["default", "fused"])
@pytest.mark.parametrize("write", ["in place", "replaced", "none"])
def test_zero_grad_in_the_closure_clears_what_was_written_since_alice_zeroed(write, fused):
    """Alice zeroes the buffers before each evaluation; the closure's ``zero_grad()``
    then has nothing to zero (one zeroing per evaluation, not two) unless something
    wrote there since, which it clears."""
    def closure_writing_first(opt, model, x, y):
        def closure():
            calls.append(1)
            for p in model.parameters():
                if write == "in place":
                    p.grad.add_(1.0)
                elif write == "replaced":
                    p.grad = torch.ones_like(p)
            opt.zero_grad()
            loss = mse(model, x, y)
            loss.backward()
            return loss
        return closure

    want_model, _, want = run("optimizer", steps=9, fused=fused)
    model, x, y = problem()
    numel = sum(p.numel() for p in model.parameters())
    opt, calls = Alice(model.parameters(), lr=1e-2, seed=0, fused=fused), []
    closure = closure_writing_first(opt, model, x, y)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        losses = [opt.step(closure).item() for _ in range(9)]
    assert losses == want and all_equal([p.detach() for p in want_model.parameters()], model.parameters())
    zeroings = sum(e.count for e in prof.key_averages(group_by_input_shape=True)
                   if e.key == "aten::zero_" and e.input_shapes == [[numel]])  # the flat gradient buffer
    assert len(calls) > 9 and zeroings == len(calls) * (1 if write == "none" else 2)


def test_gradients_computed_before_step_are_refused_not_discarded():
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = closure_for(opt, model, x, y)
    opt.step(closure)
    before = copies(model)
    nn.functional.mse_loss(model(x), y).backward()  # a micro-batch accumulated by the loop
    with pytest.raises(LoopError, match="Accumulate inside the closure"):
        opt.step(closure)
    assert opt.calls == 1 and all_equal(before, model.parameters())
    opt.zero_grad()  # the documented way out
    opt.step(closure)
    assert opt.calls == 2


@pytest.mark.parametrize("value", [{"loss": 1.0}, "loss", "vector"], ids=["dict", "str", "vector"])
def test_a_closure_that_returns_no_scalar_loss_is_refused_before_anything_changes(value):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    good = closure_for(opt, model, x, y)
    for _ in range(3):
        opt.step(good)
    before = copies(model)
    state = copy.deepcopy(opt.state_dict()["state"])

    def bad():
        loss = good()
        return torch.stack([loss, loss]) if value == "vector" else value

    with pytest.raises(ClosureError, match="must return the scalar loss"):
        opt.step(bad)
    assert opt.calls == 3 and all_equal(before, model.parameters())
    assert same_state(state, opt.state_dict()["state"])


def test_parameters_edited_between_steps_are_the_new_centre():
    """The spec: ``mu`` is what the parameter holds when ``step()`` begins, and the
    look-ahead keeps its offset ``nu - mu`` from it."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = closure_for(opt, model, x, y)
    for _ in range(13):
        opt.step(closure)
    fresh = problem(seed=1)[0]
    model.load_state_dict(fresh.state_dict())  # e.g. an EMA swap or a reload
    offsets = [opt.state[p]["offset"].clone() for p in model.parameters()]
    probe = copy.deepcopy(fresh)
    with torch.no_grad():
        for q, d in zip(probe.parameters(), offsets):
            q.add_(d)  # where the next (quick) step evaluates: new centre + offset
    want = nn.functional.mse_loss(probe(x), y)
    assert torch.equal(opt.step(closure), want)


def test_unfrozen_parameters_join_with_their_own_count():
    model, x, y = problem()
    first = model[0]
    first.requires_grad_(False)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = closure_for(opt, model, x, y)
    for _ in range(14):
        opt.step(closure)
    w = first.weight.detach().clone()
    assert first.weight not in opt.state
    first.requires_grad_(True)
    opt.step(closure)  # call 15: quick; the first layer's first step
    assert opt.state[first.weight]["step"] == 1 and opt.state[model[2].weight]["step"] == 15
    torch.testing.assert_close(opt.state[first.weight]["G"], first.weight.grad)  # a plain average
    assert torch.equal(first.weight, w)  # no move before a sampling step
    opt.step(closure)  # call 16: sampling; it moves
    assert not torch.equal(first.weight, w)
    first.requires_grad_(False)  # frozen again: its state waits
    opt.step(closure)
    assert opt.state[first.weight]["step"] == 2


def test_half_precision_parameters_follow_the_float32_trajectory():
    """bfloat16 parameters keep a float32 centre: moves below bf16 resolution add up."""
    target = torch.linspace(-1, 1, 256)

    def run(dtype):
        p = nn.Parameter(torch.full((256,), 0.5, dtype=dtype))
        opt = Alice([p], lr=1e-3, seed=0)

        train_on(opt, lambda: ((p.float() - target) ** 2).sum(), 200)
        return p, opt

    p16, opt16 = run(torch.bfloat16)
    p32, _ = run(torch.float32)
    moved = (p16 != 0.5).float().mean().item()
    assert moved > 0.9  # (storing mu in the bf16 parameter, none moved)
    mu = opt16.state[p16]["mu"]
    assert torch.equal(mu.to(torch.bfloat16), p16.detach())
    torch.testing.assert_close(mu, p32.detach(), rtol=0, atol=2e-3)  # bf16 spacing at 0.5 is 2**-9
    torch.testing.assert_close(p16.float(), p32.detach(), rtol=0, atol=4e-3)


def test_import_alice_does_not_import_the_compiler():
    code = "import sys, alice; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_perturbation_below_half_precision_spacing_is_warned_about():
    """bf16 weights near 1 with lr = 1e-3: 1 +- 1e-3 rounds back to 1 (spacing 2**-7)."""
    layer = nn.LayerNorm(64).to(torch.bfloat16)
    with pytest.warns(RuntimeWarning, match=r"below half the torch.bfloat16 spacing for 100% .*autocast"):
        Alice(layer.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Alice(layer.parameters(), lr=1e-2)  # 1 +- 1e-2 moves: no warning
        Alice(nn.LayerNorm(64).parameters(), lr=1e-3)  # float32: no warning


@pytest.mark.parametrize("closure_free", [False, True], ids=["closure", "closure-free"])
def test_a_model_converted_after_the_optimizer_was_built_takes_its_state_along(closure_free):
    """As a trainer moving the model to its device (here: to float64) after the user built
    the optimizer: the flat buffers follow, and the centre is kept."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=closure_free)

    def run(n, x, y):
        (train_closure_free if closure_free else train)(model, opt, x, y, n)

    run(12, x, y)
    calls = opt.calls
    opt.eval()
    mu = copies(model)
    opt.train()
    G = [opt.state[p]["G"].clone() for p in model.parameters()]
    model.double()
    opt.eval()
    assert all(torch.equal(p, m.double()) for p, m in zip(model.parameters(), mu))
    opt.train()
    opt.zero_grad()  # (any call into the optimizer notices the move)
    assert all(opt.state[p]["G"].dtype == torch.float64 and torch.equal(opt.state[p]["G"], g.double())
               for p, g in zip(model.parameters(), G))
    run(8, x.double(), y.double())
    assert opt.calls > calls and all(p.grad.dtype == torch.float64 for p in model.parameters())


def test_frozen_and_unused_parameters_are_left_untouched():
    used = nn.Linear(3, 1)
    frozen = nn.Parameter(torch.ones(4), requires_grad=False)
    unused = nn.Parameter(torch.ones(2))
    opt = Alice([*used.parameters(), frozen, unused], lr=1e-2, seed=0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    closure = closure_of(opt, lambda: mse(used, x, y))
    w0 = used.weight.detach().clone()
    for _ in range(15):
        opt.step(closure)
    assert torch.equal(frozen, torch.ones(4)) and torch.equal(unused.detach(), torch.ones(2))
    assert frozen not in opt.state  # never trainable: no state at all
    assert opt.state[unused]["step"] == 0 and not opt.state[unused]["G"].any()  # never took part
    assert not torch.equal(used.weight, w0)


def test_freezing_a_parameter_inside_the_closure_waits_for_the_step_end():
    model, x, y = regression(4, 8, 1, rows=16)
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    train(model, opt, x, y, 15)  # step 16 samples: three calls
    before = copies(model)
    state_before = opt.state[model[2].weight]["G"].clone()
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:  # between the evaluations at nu + sigma z and nu - sigma z
            model[2].weight.requires_grad_(False)
        opt.zero_grad()  # (would rebuild the buffers mid-step)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(calls) == 3 and opt.steps == 16
    assert torch.equal(model[2].weight, before[2])  # no gradient in every evaluation: left at mu
    assert torch.equal(opt.state[model[2].weight]["G"], state_before)
    assert not torch.equal(model[0].weight, before[0])
    opt.step(closure)  # the layout change takes effect now
    assert torch.equal(model[2].weight, before[2]) and opt.steps == 17
