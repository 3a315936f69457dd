"""Checkpoints through torch's own tools: DCP's optimizer helpers and state-dict hooks."""

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from alice import Alice


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    return model, x, y


def train(model, opt, x, y, steps):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


@pytest.fixture
def gloo(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_dcp_optimizer_state_dict_round_trip_continues_bit_for_bit(gloo, tmp_path):
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=7, quick_steps=2)
    fresh = get_optimizer_state_dict(model, opt)  # a fresh Alice already has its state: no step(None)
    assert {k for k in fresh["param_groups"][0]} >= {"seed", "calls", "lr"}
    train(model, opt, x, y, 13)
    dcp.save({"model": model.state_dict(), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=str(tmp_path / "ckpt"))
    train(model, opt, x, y, 9)

    model2 = problem()[0]
    opt2 = Alice(model2.parameters(), lr=1e-2, seed=1, quick_steps=2)
    state = {"model": model2.state_dict(), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(state, checkpoint_id=str(tmp_path / "ckpt"))
    model2.load_state_dict(state["model"])
    set_optimizer_state_dict(model2, opt2, state["optim"])
    assert (opt2.seed, opt2.calls, opt2.steps) == (7, 13, 13)
    train(model2, opt2, x, y, 9)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_state_dict_hooks_see_everything_and_a_saved_dict_is_a_consistent_snapshot():
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    seen = {}
    opt.register_state_dict_post_hook(lambda o, sd: seen.update(sd=copy.deepcopy(sd)))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.update(loaded=sd))
    train(model, opt, x, y, 12)
    saved = opt.state_dict()
    train(model, opt, x, y, 5)  # training on does not change what was returned
    assert saved["param_groups"][0]["calls"] == 12
    assert all(s["step"] == 12 for s in saved["state"].values())
    assert all(torch.equal(saved["state"][i]["G"], seen["sd"]["state"][i]["G"]) for i in saved["state"])
    opt.load_state_dict(saved)
    assert seen["loaded"] is not saved and seen["loaded"]["state"] is saved["state"] and opt.calls == 12  # a shallow copy, as torch


def test_a_dict_of_the_previous_format_loads():
    """Format 1 kept ``nu`` per parameter and the counters under ``"alice"``."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    train(model, opt, x, y, 12)
    new = opt.state_dict()
    old = {
        "state": {i: {"nu": p.detach() + s["offset"], **{k: s[k] for k in "GVHR"}}
                  for (i, s), p in zip(new["state"].items(), model.parameters())},
        "param_groups": [{k: v for k, v in g.items() if k not in ("seed", "calls", "skipped_steps")}
                         for g in new["param_groups"]],
        "alice": {"steps": 12, "seed": 3, "skipped_steps": 0, "quick_steps": 3, "warmup_steps": 10},
    }
    opt2 = Alice(model.parameters(), lr=1e-2)
    opt2.load_state_dict(old)
    assert (opt2.seed, opt2.calls) == (3, 12)
    for p in model.parameters():
        torch.testing.assert_close(opt2.state[p]["offset"], opt.state[p]["offset"])
        assert torch.equal(opt2.state[p]["R"], opt.state[p]["R"])
