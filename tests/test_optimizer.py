"""alice.Alice as a torch optimizer: what closures see, the state's layout and dtypes, RNG and
buffers across the three evaluations, groups, schedulers and presets, the kernel fallback."""

import copy

import pytest
import torch
from torch import nn

from alice import PRESETS, Alice
from alice._scalars import effective_beta, step_scalars
from helpers import Net, all_equal, closure_for, closure_of, copies, flat, quadratic, regression, same_state, train


def test_invalid_group_values_and_quick_steps_in_a_group():
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"hess_comp: 'bad'"):
        Alice([{"params": [p]}, {"params": [q], "hess_comp": "bad"}])
    with pytest.raises(ValueError, match="quick_steps"):
        Alice([{"params": [p], "quick_steps": 2}])
    opt = Alice([p])
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


def test_closure_calls_per_step_and_loss_at_nu():
    model, x, y = quadratic()
    calls = []
    opt = Alice(model.parameters(), lr=1e-2, quick_steps=3, seed=0)
    closure = closure_for(opt, model, x, y, counter=calls)
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
            opt.step(closure_for(opt, model, x, y, zero="optimizer" if zero else "none"))
        runs.append(copies(model))
    assert all_equal(*runs)


def test_the_gradient_left_in_grad_is_the_one_at_nu():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    closure = closure_for(opt, model, x, y)
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
    closure = closure_for(opt, model, x, y)
    opt.step(closure)
    with torch.no_grad():
        model.weight.clamp_(-0.1, 0.1)  # a projection between steps, as in weight clipping
    edited = model.weight.detach().clone()
    opt.step(closure)  # still warm-up: no move, the edited centre stays
    assert torch.equal(model.weight, edited)


@pytest.mark.parametrize("zero", ["optimizer", "model"])
def test_sparse_gradients_train_exactly_as_dense_ones(zero):
    """A sparse embedding's gradient lands in Alice's dense buffer (added in place, or
    densified when the closure's ``model.zero_grad()`` made backward allocate it)."""
    runs = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        emb = nn.Embedding(10, 3, sparse=sparse)
        opt = Alice(emb.parameters(), lr=1e-2, seed=0)

        closure = closure_of(opt, lambda: (emb(torch.tensor([1, 2, 2])) ** 2).sum(),
                             zero="optimizer" if zero == "optimizer" else emb)
        for _ in range(14):
            opt.step(closure)
        runs[sparse] = emb.weight.detach().clone()
    assert not torch.equal(runs[False], nn.Embedding(10, 3).weight)  # it trained
    assert torch.equal(runs[True], runs[False])


def test_state_is_five_tensors_per_parameter_and_float32_for_bfloat16():
    model = nn.Linear(4, 2).to(torch.bfloat16)
    x, y = torch.randn(8, 4, dtype=torch.bfloat16), torch.randn(8, 2, dtype=torch.bfloat16)
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    closure = closure_for(opt, model, x, y)
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


# -- randomness and buffers -------------------------------------------------------


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
    opt.step(closure_for(opt, model, x, y))  # warm-up sampling step: nu == mu
    reference(x)  # one ordinary training forward
    if use_model:
        assert model.bn.num_batches_tracked.item() == 1
        assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
        assert torch.equal(model.bn.running_var, reference.bn.running_var)
    else:  # documented default: the three evaluations each update the statistics
        assert model.bn.num_batches_tracked.item() == 3


# -- groups and schedulers --------------------------------------------------------


def test_schedulers_drive_lr_and_bounds():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    closure = closure_for(opt, model, x, y)
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
    closure = closure_for(opt, model, x, y)
    opt.step(closure)
    opt.param_groups[0]["lr"] = 0.005
    opt.step(closure)  # tau1 = 0.0075 <= tau2 = 0.01: valid
    assert opt.calls == 2 and opt.skipped_steps == 0


def test_a_step_at_lr_zero_evaluates_once_and_changes_nothing():
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)  # ends at lr = 0
    calls = []
    closure = closure_for(opt, model, x, y, counter=calls)
    for _ in range(5):
        opt.step(closure)
        sched.step()
    assert opt.param_groups[0]["lr"] == 0
    before = copies(model)
    state = copy.deepcopy(opt.state_dict()["state"])
    del calls[:]
    loss = opt.step(closure)
    assert len(calls) == 1 and torch.equal(loss, nn.functional.mse_loss(model(x), y))  # at nu = mu here
    assert opt.steps == 5 and opt.calls == 5  # not counted: the schedule does not advance
    assert all_equal(before, model.parameters())
    assert same_state(state, opt.state_dict()["state"])
    for bad in (-1e-3, float("nan")):
        opt.param_groups[0]["lr"] = bad
        with pytest.raises(ValueError, match="param group 0: Invalid lr"):
            opt.step(closure)


def test_a_group_at_lr_zero_beside_a_training_group():
    model, x, y = regression(4, 8, 1, rows=16)
    frozen = [p.detach().clone() for p in model[2].parameters()]
    opt = Alice([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], lr=1e-2)
    first = flat(model[0]).clone()
    train(model, opt, x, y, 14)
    assert opt.steps == 14
    assert not torch.equal(flat(model[0]), first)
    assert all(torch.equal(p, q) for p, q in zip(model[2].parameters(), frozen))


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

    closure = closure_of(opt, lambda: nn.functional.mse_loss(model(x) * extra, y))
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


# -- kernels -----------------------------------------------------------------------


def test_a_kernel_that_fails_to_compile_falls_back_to_foreach(monkeypatch):
    from alice import kernels
    from alice.kernels import compiled  # private: no public way yet to fail a compile after the probe

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
            assert kernels.available("cpu") is False
        else:
            train(model, opt, x, y, 14)
        runs.append(copies(model))
    assert all_equal(*runs)
