"""Decoupled weight decay (spec, "Extensions beyond the paper"): AdamW's rule on the
centre, only on steps that move. (Invalid values are in the error table of configs.py.)"""

import math

import pytest
import torch

import alice
from alice import Alice
from helpers import closure_of


def _steps(opt, loss_at, steps, lr_at=None):
    """Yields after each of ``steps`` steps on the loss ``loss_at(n)`` at step index ``n``;
    before step ``n`` the group's lr becomes ``lr_at[n]`` where given."""
    for n in range(steps):
        if lr_at and n in lr_at:
            opt.param_groups[0]["lr"] = lr_at[n]
        opt.step(closure_of(opt, lambda: loss_at(n)))
        yield n


def _quadratic_run(steps, lr=1e-2, lr_change=None, poison=(), **kwargs):
    """A float64 quadratic; the loss is NaN at the step indices in ``poison``."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    opt = Alice([p], lr=lr, seed=3, **kwargs)
    loss_at = lambda n: ((p - 1.0) ** 2).sum() + (float("nan") if n in poison else 0.0)  # noqa: E731
    trajectory = [p.detach().clone() for _ in _steps(opt, loss_at, steps, lr_change)]
    return opt, p, trajectory


def _flat_steps(opt, params, steps, lr_at=None):
    """``steps`` steps on a loss with zero gradient everywhere: the bounded step is 0,
    so only the decay moves mu. Returns the first parameter's first value after each."""
    zero = lambda n: sum((p * 0).sum() for p in params)  # noqa: E731
    return [params[0].detach()[0].item() for _ in _steps(opt, zero, steps, lr_at)]


def test_zero_weight_decay_is_bit_for_bit_the_plain_trajectory():
    _, _, plain = _quadratic_run(30)
    _, _, zero = _quadratic_run(30, weight_decay=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))


def test_decay_shrinks_the_centre_before_the_move_and_never_in_warm_up():
    # a zero gradient everywhere: the bounded step is 0, so only the decay moves mu
    p = torch.nn.Parameter(torch.full((3,), 2.0, dtype=torch.float64))
    opt = Alice([p], lr=0.1, weight_decay=0.5, seed=0)
    values = _flat_steps(opt, [p], 13)
    warmup = opt.warmup_steps
    assert values[:warmup] == [2.0] * warmup  # warm-up steps do not move, so do not decay
    for k, v in enumerate(values[warmup:], start=1):
        assert v == pytest.approx(2.0 * (1 - 0.1 * 0.5) ** k, rel=1e-12)


def test_skipped_steps_and_lr_zero_groups_do_not_decay():
    _, p_skip, traj = _quadratic_run(20, weight_decay=0.3, poison={14})
    assert torch.equal(traj[14], traj[13])  # the non-finite step changed nothing
    p = torch.nn.Parameter(torch.ones(4))
    q = torch.nn.Parameter(torch.ones(4))
    opt = Alice([{"params": [p]}, {"params": [q], "lr": 0.0}], lr=1e-2, weight_decay=0.5)
    _flat_steps(opt, [p, q], 15)
    assert torch.equal(q.detach(), torch.ones(4))
    assert (p.detach() < 1).all()


def test_decay_follows_the_groups_current_lr():
    p = torch.nn.Parameter(torch.full((2,), 1.0, dtype=torch.float64))
    opt = Alice([p], lr=0.1, weight_decay=1.0, seed=0)
    _flat_steps(opt, [p], 12, lr_at={11: 0.05})
    assert p[0].item() == pytest.approx((1 - 0.1) * (1 - 0.05), rel=1e-12)


def test_weight_decay_round_trips_through_a_checkpoint_and_old_ones_load():
    opt, p, _ = _quadratic_run(15, weight_decay=0.2)
    state = opt.state_dict()
    assert state["param_groups"][0]["weight_decay"] == 0.2
    fresh = Alice([torch.nn.Parameter(p.detach().clone())], lr=1e-2, seed=3)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["weight_decay"] == 0.2
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["weight_decay"]  # a checkpoint written before weight_decay existed
    again = Alice([torch.nn.Parameter(p.detach().clone())], lr=1e-2, seed=3, weight_decay=0.0)
    again.load_state_dict(old)
    assert again.param_groups[0].get("weight_decay", 0.0) == 0.0


def test_param_groups_for_weight_decay_exempts_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    model[2].bias.requires_grad_(False)
    groups = alice.param_groups_for_weight_decay(model, 0.1, no_decay=("2.weight",))
    decay, keep = groups
    assert decay["weight_decay"] == 0.1 and [tuple(p.shape) for p in decay["params"]] == [(8, 4)]
    assert keep["weight_decay"] == 0.0 and len(keep["params"]) == 4  # 0.bias, norm w/b, 2.weight
    opt = Alice(groups, lr=1e-2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="weight_decay"):
        alice.param_groups_for_weight_decay(model, -1.0)
    with pytest.raises(ValueError, match="no_decay"):
        alice.param_groups_for_weight_decay(model, 0.1, no_decay=("nope",))
    assert not math.isnan(groups[0]["weight_decay"])
