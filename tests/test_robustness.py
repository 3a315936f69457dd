"""What a failed or odd step and a wrong checkpoint must not do: leave anything
changed, crash with an unrelated error, or load silently."""

import copy

import pytest
import torch
from torch import nn

import alice
from alice import Alice


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    return model, x, y


def closure_for(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def train(model, opt, x, y, steps):
    closure = closure_for(model, opt, x, y)
    for _ in range(steps):
        opt.step(closure)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def trained(steps=12, **kwargs):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, **kwargs)
    train(model, opt, x, y, steps)
    return model, opt


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
    before = [p.detach().clone() for p in model.parameters()]
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


# -- checkpoints that are wrong are refused ----------------------------------------------

def fresh_like():
    model, _, _ = problem()
    return model, Alice(model.parameters(), lr=1e-2, seed=3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "0.01", -1.0])
def test_a_saved_lr0_that_is_not_a_finite_number_is_refused(value):
    _, opt = trained()
    state_dict = opt.state_dict()
    state_dict["param_groups"][0]["lr0"] = value
    _, other = fresh_like()
    with pytest.raises(ValueError, match="Invalid lr0"):
        other.load_state_dict(state_dict)


def test_a_missing_entry_means_the_state_of_a_fresh_optimizer():
    model, opt = trained()
    state_dict = opt.state_dict()
    del state_dict["state"][1]
    other_model, other = fresh_like()
    train(other_model, other, *problem()[1:], 5)  # the loading optimizer's own state must not survive
    other.load_state_dict(state_dict)
    bias = other_model[0].bias
    assert float(other.state[bias]["step"]) == 0
    for key in ("offset", "G", "V", "H", "R"):
        assert torch.count_nonzero(other.state[bias][key]) == 0
    assert torch.equal(other.state[other_model[0].weight]["G"], opt.state[model[0].weight]["G"])


@pytest.mark.parametrize("edit, message", [
    (lambda sd: [g.update(skipped_steps=20, calls=15) for g in sd["param_groups"]],
     "skipped_steps is 20 but only 15 steps"),
    (lambda sd: sd["state"][0].update(step=torch.tensor(13.0)), "step of parameter id 0 is 13, more than the 12"),
    (lambda sd: sd["alice"].update(format=0), "format is 0"),
    (lambda sd: sd["alice"].update(format=3), "format is 3"),
    (lambda sd: sd["alice"].update(format="two"), "format is 'two'"),
    (lambda sd: sd["state"][0].update(G=torch.empty(8, 4, device="meta")), "'G' of parameter id 0 is a meta"),
    (lambda sd: sd["state"][0].update(step=torch.empty((), device="meta")), "step of parameter id 0 is"),
])
def test_inconsistent_counts_unknown_formats_and_meta_tensors_are_refused(edit, message):
    _, opt = trained()
    state_dict = opt.state_dict()
    edit(state_dict)
    model, other = fresh_like()
    before = flat(model).clone()
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state_dict)
    assert torch.equal(flat(model), before) and other.calls == 0


def closure_free_run(steps=6):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, closure_free=True)
    for _ in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, x, y


@pytest.mark.parametrize("how", ["load_state_dict", "deepcopy"])
def test_closure_free_eval_mode_survives_loading_and_copying(how):
    model, opt, x, y = closure_free_run()
    reference = copy.deepcopy((model, opt))
    opt.eval()
    mu = flat(model).clone()
    if how == "load_state_dict":
        opt.load_state_dict(opt.state_dict())
    else:
        model, opt = copy.deepcopy((model, opt))
    assert torch.equal(flat(model), mu) and opt.evaluation is None  # still at mu, still in eval mode
    opt.train()
    for m, o in ((model, opt), reference):
        for _ in range(5):
            nn.functional.mse_loss(m(x), y).backward()
            o.step()
            o.zero_grad()
    assert torch.equal(flat(model), flat(reference[0]))


def test_a_missing_closure_names_the_fixes_including_alice_trainer():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(alice.ClosureError, match="AliceTrainer") as err:
        alice.Alice([p]).step()
    assert "closure_free=True" in str(err.value)
