"""Behaviour of alice.Alice as a torch optimizer: errors, closures, state, RNG, buffers."""

import copy
import io
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

from alice import PRESETS, Alice, ClosureError
from alice._scalars import effective_beta, step_scalars

# (kwargs, regex of the error message) -- every invalid value names the argument and value.
INVALID = [
    (dict(lr=-1e-3), r"lr: -0\.001"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\]: 1\.0"),
    (dict(betas=(0.9, 0.0)), r"betas\[1\]: 0\.0"),
    (dict(betas=(0.9,)), r"betas: \(0\.9,\)"),
    (dict(betas=(0.9, 0.5), quick_steps=3), r"betas\[1\]: 0\.5.*beta3"),
    (dict(eps=0.0), r"eps: 0\.0"),
    (dict(w1=-1.0), r"w1: -1\.0"),
    (dict(w2=-0.1), r"w2: -0\.1"),
    (dict(phi=2.0), r"phi: 2\.0"),
    (dict(phi=0.0), r"phi: 0\.0"),
    (dict(omega=0.0), r"omega: 0\.0"),
    (dict(limit_method="lion"), r"limit_method: 'lion'"),
    (dict(lr_min=-1.0), r"lr_min: -1\.0"),
    (dict(lr_min=1.0, lr_max=0.5), r"lr_max: 0\.5"),
    (dict(lr=1e-3, lr_min=1.0), r"lr_max: None"),
    (dict(hess_comp="sqrt"), r"hess_comp: 'sqrt'"),
    (dict(grad_glass=False, hess_comp="zero"), r"grad_glass: False"),
    (dict(grad_glass="yes"), r"grad_glass: 'yes'"),
    (dict(scale_bounds_with_lr=1), r"scale_bounds_with_lr: 1"),
    (dict(quick_steps=-1), r"quick_steps: -1"),
    (dict(quick_steps=1.5), r"quick_steps: 1\.5"),
    (dict(lr=float("nan")), r"lr: nan"),
    (dict(seed=-3), r"seed: -3"),
    (dict(lr=torch.tensor([1e-3, 2e-3])), r"lr: tensor"),
]


@pytest.mark.parametrize("kwargs, message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_hyperparameters_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Alice([nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_group_values_and_quick_steps_in_a_group():
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"hess_comp: 'bad'"):
        Alice([{"params": [p]}, {"params": [q], "hess_comp": "bad"}])
    with pytest.raises(ValueError, match="quick_steps"):
        Alice([{"params": [p], "quick_steps": 2}])
    opt = Alice([p])
    with pytest.raises(ValueError, match=r"omega: -1"):
        opt.add_param_group({"params": [q], "omega": -1})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"Invalid params: a parameter of shape \(2,\) is listed twice"):
        Alice([q, q])


def test_a_tensor_lr_works_as_a_float_does():
    """As torch's Adam accepts it (a CPU tensor, read without waiting for a GPU)."""
    runs = []
    for lr in (1e-2, torch.tensor(1e-2)):
        model, x, y = quadratic()
        opt = Alice(model.parameters(), lr=lr, seed=0)
        train(model, opt, x, y, 15)
        runs.append(model.weight.detach().clone())
    assert torch.equal(*runs)


def quadratic(dim=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(dim, 1).to(dtype)
    x = torch.randn(32, dim, generator=g, dtype=dtype)
    y = torch.randn(32, 1, generator=g, dtype=dtype)
    return model, x, y


def make_closure(opt, model, x, y, zero=True, counter=None):
    def closure():
        if counter is not None:
            counter.append(1)
        if zero:
            opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def test_step_without_a_closure_explains_what_to_pass():
    model, _, _ = quadratic()
    opt = Alice(model.parameters())
    with pytest.raises(ClosureError, match=r"closure that re-evaluates the model.*loss\.backward\(\)"):
        opt.step()
    assert issubclass(ClosureError, (RuntimeError, TypeError, ValueError))


def test_misbehaving_closures_raise_and_leave_parameters_unchanged():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ClosureError, match="returned None"):
        opt.step(lambda: None)
    with pytest.raises(ClosureError, match="No parameter received a gradient"):
        opt.step(lambda: nn.functional.mse_loss(model(x), y))

    def broken():
        raise KeyError("data loader failed")

    with pytest.raises(KeyError):
        opt.step(broken)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.steps == 0 and opt.calls == 0
    assert all(not s[k].any() for s in opt.state.values() for k in ("step", "offset", "G", "V", "H", "R"))


def test_closure_calls_per_step_and_loss_at_nu():
    model, x, y = quadratic()
    calls = []
    opt = Alice(model.parameters(), lr=1e-2, quick_steps=3, seed=0)
    closure = make_closure(opt, model, x, y, counter=calls)
    per_step = []
    for _ in range(20):
        n = len(calls)
        loss = opt.step(closure)
        per_step.append(len(calls) - n)
    # warm-up: 10 sampling steps; then n % 4 == 0 samples (12, 16, 20)
    assert per_step == [3] * 10 + [1, 3, 1, 1, 1, 3, 1, 1, 1, 3]
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0


def test_closures_that_do_not_zero_gradients_give_the_same_result():
    runs = []
    for zero in (True, False):
        model, x, y = quadratic()
        opt = Alice(model.parameters(), lr=1e-2, seed=3)
        for _ in range(25):
            opt.step(make_closure(opt, model, x, y, zero=zero))
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_the_gradient_left_in_grad_is_the_one_at_nu():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    closure = make_closure(opt, model, x, y)
    for _ in range(13):
        opt.step(closure)
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, q in zip(model.parameters(), probe.parameters()):
            q.copy_(p + opt.state[p]["offset"])  # nu
    nn.functional.mse_loss(probe(x), y).backward()
    loss = opt.step(closure)  # a quick step, evaluated at that nu
    assert torch.equal(loss, nn.functional.mse_loss(probe(x), y))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), probe.parameters()))


def test_parameters_hold_mu_after_every_step_even_when_edited_in_warm_up():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = make_closure(opt, model, x, y)
    opt.step(closure)
    with torch.no_grad():
        model.weight.clamp_(-0.1, 0.1)  # a projection between steps, as in weight clipping
    edited = model.weight.detach().clone()
    opt.step(closure)  # still warm-up: no move, the edited centre stays
    assert torch.equal(model.weight, edited)


def test_frozen_and_unused_parameters_are_left_untouched():
    used = nn.Linear(3, 1)
    frozen = nn.Parameter(torch.ones(4), requires_grad=False)
    unused = nn.Parameter(torch.ones(2))
    opt = Alice([*used.parameters(), frozen, unused], lr=1e-2, seed=0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(used(x), y)
        loss.backward()
        return loss

    w0 = used.weight.detach().clone()
    for _ in range(15):
        opt.step(closure)
    assert torch.equal(frozen, torch.ones(4)) and torch.equal(unused.detach(), torch.ones(2))
    assert frozen not in opt.state  # never trainable: no state at all
    assert opt.state[unused]["step"] == 0 and not opt.state[unused]["G"].any()  # never took part
    assert not torch.equal(used.weight, w0)


@pytest.mark.parametrize("zero", ["optimizer", "model"])
def test_sparse_gradients_train_exactly_as_dense_ones(zero):
    """A sparse embedding's gradient lands in Alice's dense buffer (added in place, or
    densified when the closure's ``model.zero_grad()`` made backward allocate it)."""
    runs = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        emb = nn.Embedding(10, 3, sparse=sparse)
        opt = Alice(emb.parameters(), lr=1e-2, seed=0)

        def closure():
            (opt if zero == "optimizer" else emb).zero_grad()
            loss = (emb(torch.tensor([1, 2, 2])) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(14):
            opt.step(closure)
        runs[sparse] = emb.weight.detach().clone()
    assert not torch.equal(runs[False], nn.Embedding(10, 3).weight)  # it trained
    assert torch.equal(runs[True], runs[False])


def test_state_is_five_tensors_per_parameter_and_float32_for_bfloat16():
    model = nn.Linear(4, 2).to(torch.bfloat16)
    x, y = torch.randn(8, 4, dtype=torch.bfloat16), torch.randn(8, 2, dtype=torch.bfloat16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = make_closure(opt, model, x, y)
    losses = [opt.step(closure).item() for _ in range(40)]
    for p in model.parameters():
        assert p.dtype == torch.bfloat16
        state = dict(opt.state[p])
        assert state.pop("step").dtype == torch.float64
        assert sorted(state) == ["G", "H", "R", "V", "mu", "offset"]  # mu: the float32 centre
        assert all(t.dtype == torch.float32 and t.shape == p.shape for t in state.values())
        assert torch.equal(state["mu"].to(torch.bfloat16), p)
    assert losses[-1] < losses[0]


def test_autocast_inside_the_closure():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(30)]
    assert model.weight.dtype == torch.float32 and losses[-1] < losses[0]


# -- non-finite steps -------------------------------------------------------------


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
    params = [p.detach().clone() for p in model.parameters()]
    poison.update(on=True, start=len(calls))
    opt.step(closure)
    with pytest.warns(RuntimeWarning, match="skipped 1 step"):  # decided on the device, told when read
        assert opt.skipped_steps == 1 and opt.steps == 11
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    after = opt.state_dict()
    for pid, state in saved["state"].items():
        assert all(torch.equal(state[k], after["state"][pid][k]) for k in state if k != "sampled")
    poison["on"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)  # training goes on, and the warning is not repeated
    assert opt.steps == 12


def test_warning_is_issued_once():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y) * float("inf")
        loss.backward()
        return loss

    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            opt.step(closure)
            opt.skipped_steps
    assert len([w for w in record if "skipped" in str(w.message)]) == 1
    assert opt.skipped_steps == 3 and opt.steps == 0


# -- randomness and buffers -------------------------------------------------------


class Net(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(p), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def test_sampling_evaluations_share_rng_and_leave_it_as_one_evaluation():
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    masks = []

    def closure():
        opt.zero_grad()
        masks.append(torch.get_rng_state())
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    start = torch.get_rng_state()
    opt.step(closure)  # a sampling step (warm-up)
    assert len(masks) == 3 and all(torch.equal(m, start) for m in masks)
    after = torch.get_rng_state()
    torch.set_rng_state(start)
    model(x)  # one ordinary evaluation draws the same dropout mask
    assert torch.equal(after, torch.get_rng_state())


def test_dropout_masks_agree_across_the_three_evaluations():
    torch.manual_seed(1)
    drop = nn.Dropout(0.5)
    w = nn.Parameter(torch.ones(64))
    opt = Alice([w], lr=1e-3, seed=0)
    seen = []

    def closure():
        opt.zero_grad()
        out = drop(w)
        seen.append((out != 0).clone())
        loss = out.sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])


@pytest.mark.parametrize("use_model", [True, False])
def test_batchnorm_statistics(use_model):
    torch.manual_seed(0)
    model = Net(p=0.0)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    reference = copy.deepcopy(model)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, model=model if use_model else None)
    opt.step(make_closure(opt, model, x, y))  # warm-up sampling step: nu == mu
    reference(x)  # one ordinary training forward
    if use_model:
        assert model.bn.num_batches_tracked.item() == 1
        assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
        assert torch.equal(model.bn.running_var, reference.bn.running_var)
    else:  # documented default: the three evaluations each update the statistics
        assert model.bn.num_batches_tracked.item() == 3


def test_skipped_step_restores_buffers_when_model_is_given():
    torch.manual_seed(0)
    model = Net(p=0.0)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, model=model)
    buffers = copy.deepcopy(list(model.buffers()))

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x * float("nan")), y)
        loss.backward()
        return loss

    opt.step(closure)
    with pytest.warns(RuntimeWarning):
        assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


# -- groups and schedulers --------------------------------------------------------


def test_schedulers_drive_lr_and_bounds():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    closure = make_closure(opt, model, x, y)
    for _ in range(20):
        opt.step(closure)
        sched.step()
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(1e-2 / 16)
    scalars = step_scalars(group, opt.quick_steps)
    assert scalars.sigma == group["lr"] and scalars.tau2 == pytest.approx(2 * group["lr"])
    group["scale_bounds_with_lr"] = False
    assert step_scalars(group, opt.quick_steps).tau2 == pytest.approx(2e-2)


def test_halving_the_lr_keeps_bounds_that_were_valid():
    """lr_max defaults to twice the *initial* lr in the step and in the validation alike."""
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=0.01, lr_min=0.015, seed=0)
    closure = make_closure(opt, model, x, y)
    opt.step(closure)
    opt.param_groups[0]["lr"] = 0.005
    opt.step(closure)  # tau1 = 0.0075 <= tau2 = 0.01: valid
    assert opt.calls == 2 and opt.skipped_steps == 0


def test_a_step_at_lr_zero_evaluates_once_and_changes_nothing():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)  # ends at lr = 0
    calls = []
    closure = make_closure(opt, model, x, y, counter=calls)
    for _ in range(5):
        opt.step(closure)
        sched.step()
    assert opt.param_groups[0]["lr"] == 0
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict()["state"])
    del calls[:]
    loss = opt.step(closure)
    assert len(calls) == 1 and torch.equal(loss, nn.functional.mse_loss(model(x), y))  # at nu = mu here
    assert opt.steps == 5 and opt.calls == 5  # not counted: the schedule does not advance
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = opt.state_dict()["state"]
    assert all(torch.equal(state[i][k], after[i][k]) for i in state for k in state[i] if k != "sampled")
    for bad in (-1e-3, float("nan")):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(ValueError, match="param group 0: Invalid lr"):
            opt.step(closure)


def test_per_group_hyperparameters_and_phi_default():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    opt = Alice([{"params": [a]}, {"params": [b], "lr": 0.1, "betas": (0.8, 0.99), "lr_max": 0.5}], lr=1e-2)
    ha, hb = (step_scalars(g, opt.quick_steps) for g in opt.param_groups)
    assert (ha.sigma, ha.tau2, ha.phi, ha.beta1) == (1e-2, 2e-2, pytest.approx(0.1), 0.9)
    assert (hb.sigma, hb.tau2, hb.phi, hb.beta1) == (0.1, 0.5, pytest.approx(0.2), 0.8)
    assert hb.beta3 == pytest.approx(1 - 4 * 0.01)
    assert effective_beta(0.9, 1) == 0 and effective_beta(0.9, 5) == 0.8 and effective_beta(0.9, 50) == 0.9
    assert opt.warmup_steps == 10  # from the constructor's beta1, not the group's


def test_complex_parameters_are_refused():
    with pytest.raises(ValueError, match="complex64.*real floating-point"):
        Alice([nn.Parameter(torch.zeros(2, dtype=torch.complex64))])


def test_a_group_added_later_joins_the_global_schedule():
    model, x, y = quadratic()
    extra = nn.Parameter(torch.ones(1))
    opt = Alice(model.parameters(), lr=1e-2, seed=0)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x) * extra, y)
        loss.backward()
        return loss

    extra.requires_grad_(False)
    for _ in range(12):
        opt.step(closure)
    extra.requires_grad_(True)
    opt.add_param_group({"params": [extra], "lr": 1e-3, "hess_comp": "rms"})
    opt.step(closure)  # step 13: a quick step; extra's first: its averages are plain ones
    assert opt.steps == 13 and opt.param_groups[1]["lr0"] == 1e-3
    g = extra.grad.clone()
    assert opt.state[extra]["step"] == 1
    torch.testing.assert_close(opt.state[extra]["G"], g)
    torch.testing.assert_close(opt.state[extra]["V"], g * g)
    for _ in range(2):  # steps 14, 15: quick; extra has not sampled yet, so it stays
        opt.step(closure)
        assert extra.item() == 1.0
    opt.step(closure)  # step 16: sampling; now it moves, within its bound
    assert extra.item() != 1.0 and abs(extra.item() - 1.0) <= 2e-3 + 1e-12


def test_presets():
    p = [nn.Parameter(torch.zeros(2))]
    for name, settings in PRESETS.items():
        group = Alice.preset(name, p, lr=0.1).param_groups[0]
        assert all(group[k] == v for k, v in settings.items()) and group["lr"] == 0.1
    with pytest.raises(ValueError, match="preset: 'nope'"):
        Alice.preset("nope", p)


# -- checkpoints -----------------------------------------------------------------


def train(model, opt, x, y, steps):
    closure = make_closure(opt, model, x, y)
    for _ in range(steps):
        opt.step(closure)


def snapshot(model, opt):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("fused", [False, None])
def test_resume_is_bit_exact(fused):
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=5, quick_steps=2, fused=fused)
    train(model, opt, x, y, 7)
    opt.param_groups[0]["lr"] = 5e-3  # as a scheduler would: bounds scale by lr / lr0
    train(model, opt, x, y, 6)
    saved = snapshot(model, opt)
    train(model, opt, x, y, 17)

    loaded = torch.load(saved, weights_only=True)
    model2 = quadratic()[0]
    model2.load_state_dict(loaded["model"])
    opt2 = Alice(model2.parameters(), lr=1e-2, quick_steps=5, fused=fused)  # seed, schedule come from the dict
    opt2.load_state_dict(loaded["opt"])
    assert (opt2.steps, opt2.seed, opt2.quick_steps) == (13, 5, 2)
    assert (opt2.param_groups[0]["lr"], opt2.param_groups[0]["lr0"]) == (5e-3, 1e-2)
    train(model2, opt2, x, y, 17)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert all(torch.equal(opt.state[p][k], opt2.state[p2][k]) for k in opt.state[p])


def test_mismatched_state_dicts_raise_and_change_nothing():
    model, x, y = quadratic(dim=5)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    train(model, opt, x, y, 3)
    good = opt.state_dict()
    other, xo, yo = quadratic(dim=4)
    opt_other = Alice(other.parameters(), lr=1e-2, seed=1)
    train(other, opt_other, xo, yo, 2)
    before = copy.deepcopy(opt_other.state_dict())
    bad_groups = {**good, "param_groups": good["param_groups"] * 2}
    def edited(state=None, group=None, alice=None):
        """``good`` with entries of parameter 0's state, group 0 or "alice" replaced."""
        out = copy.deepcopy(good)
        out["state"][0].update(state or {})
        out["param_groups"][0].update(group or {})
        out["alice"].update(alice or {})
        return out

    cases = [
        (good, r"shape \(1, 5\).*shape \(1, 4\)"),
        (bad_groups, "2 param groups"),
        ("not a dict", "expected a dict"),
        (edited(state={"G": torch.full((1, 5), float("nan"))}), "'G' of parameter id 0 holds non-finite"),
        (edited(state={"V": [1.0]}), "'V' of parameter id 0 is a list"),
        (edited(state={"step": torch.tensor(-1.0)}), r"step of parameter id 0 is -1 \(must be an integer >= 0\)"),
        (edited(group={"calls": 2.5}), r"calls is 2\.5"),
        (edited(group={"eps": -1.0}), "param group 0: Invalid eps: -1.0"),
        (edited(alice={"quick_steps": 2.5}), r"Invalid quick_steps: 2\.5"),
    ]
    for state_dict, message in cases[2:]:  # the same checks against the right optimizer
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(state_dict)
    for state_dict, message in cases[:2]:
        with pytest.raises(ValueError, match=message):
            opt_other.load_state_dict(state_dict)
        after = opt_other.state_dict()
        assert after["alice"] == before["alice"] and after["param_groups"] == before["param_groups"]
        for pid, state in before["state"].items():
            assert all(torch.equal(state[k], after["state"][pid][k]) for k in state if k != "sampled")
    extra = nn.Linear(5, 1)
    with pytest.raises(ValueError, match=re.escape("param group 0 has 3 parameters but this optimizer's has 2")):
        Alice(extra.parameters()).load_state_dict(
            {**good, "param_groups": [{**good["param_groups"][0], "params": [0, 1, 2]}]}
        )


def test_load_keeps_float32_state_for_half_parameters():
    model = nn.Linear(3, 1).to(torch.bfloat16)
    x, y = torch.randn(4, 3, dtype=torch.bfloat16), torch.randn(4, 1, dtype=torch.bfloat16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    train(model, opt, x, y, 12)
    opt2 = Alice(model.parameters())
    opt2.load_state_dict(opt.state_dict())
    for p in model.parameters():
        assert all(torch.equal(opt.state[p][k], opt2.state[p][k]) for k in opt.state[p])
        assert opt2.state[p]["G"].dtype == torch.float32


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))], ids=["deepcopy", "pickle"])
def test_copies_of_model_and_optimizer_continue_identically(duplicate):
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=9, quick_steps=2)
    train(model, opt, x, y, 12)
    model2, opt2 = duplicate((model, opt))
    counters = lambda o: (o.steps, o.calls, o.seed, o.skipped_steps, o.quick_steps, o.warmup_steps)  # noqa: E731
    assert counters(opt2) == counters(opt) == (12, 12, 9, 0, 2, 10)
    train(model, opt, x, y, 7)
    train(model2, opt2, x, y, 7)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_a_kernel_that_fails_to_compile_falls_back_to_foreach(monkeypatch):
    from alice.kernels import compiled

    def broken(fn):
        def run(*args, **kwargs):
            raise torch._dynamo.exc.TorchDynamoException("no backend for this graph")

        return run

    monkeypatch.setattr(compiled, "_AVAILABLE", {"cpu": True})
    monkeypatch.setattr(compiled, "_compile", broken)
    runs = []
    for fused in (True, False):
        model, x, y = quadratic()
        opt = Alice(model.parameters(), lr=1e-2, seed=4, fused=fused)
        if fused:
            with pytest.warns(RuntimeWarning, match="falls back to the flat multi-tensor path"):
                train(model, opt, x, y, 14)
            assert compiled._AVAILABLE["cpu"] is False
        else:
            train(model, opt, x, y, 14)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
