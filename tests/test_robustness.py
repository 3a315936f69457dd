"""What a failed or odd step must not do: leave anything changed or crash with an
unrelated error. (Wrong checkpoints are refused in ``test_checkpoint.py``.)"""

import copy

import pytest
import torch
from torch import nn

from alice import Alice
from helpers import copies, flat, regression, train


def problem():
    return regression(4, 8, 1, rows=16)


# -- steps that fail or change the model mid-step --------------------------------------

def test_a_group_at_lr_zero_beside_a_training_group():
    model, x, y = problem()
    frozen = [p.detach().clone() for p in model[2].parameters()]
    opt = Alice([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], lr=1e-2)
    first = flat(model[0]).clone()
    train(model, opt, x, y, 14)
    assert opt.steps == 14
    assert not torch.equal(flat(model[0]), first)
    assert all(torch.equal(p, q) for p, q in zip(model[2].parameters(), frozen))


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


def test_freezing_a_parameter_inside_the_closure_waits_for_the_step_end():
    model, x, y = problem()
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
