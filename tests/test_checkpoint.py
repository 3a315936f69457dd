"""Checkpoints: a resumed run continues bit for bit (every configuration of the table),
copies of model and optimizer continue alike, wrong state dicts are refused before
anything changes, older formats load, and torch's own tools (DCP's optimizer helpers,
state-dict hooks) work."""

import copy
import pickle
import re

import pytest
import torch
import torch.distributed as dist
from torch import nn

from alice import Alice
from configs import CONFIGS, LOAD_ERRORS, LR
from helpers import all_equal, flat, quadratic, regression, same_state, saved, train, train_closure_free


def problem():
    return regression(4, 8, 1, rows=16)


def trained(steps=12, **kwargs):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, **kwargs)
    train(model, opt, x, y, steps)
    return model, opt


def fresh_like():
    model, _, _ = problem()
    return model, Alice(model.parameters(), lr=1e-2, seed=3)


# -- a resumed run continues bit for bit -------------------------------------------------


@pytest.mark.parametrize("fused", [False, None])
def test_resume_is_bit_exact(fused):
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=5, quick_steps=2, fused=fused)
    train(model, opt, x, y, 7)
    opt.param_groups[0]["lr"] = 5e-3  # as a scheduler would: bounds scale by lr / lr0
    train(model, opt, x, y, 6)
    buffer = saved(model, opt)
    train(model, opt, x, y, 17)

    loaded = torch.load(buffer, weights_only=True)
    model2 = quadratic()[0]
    model2.load_state_dict(loaded["model"])
    opt2 = Alice(model2.parameters(), lr=1e-2, quick_steps=5, fused=fused)  # seed, schedule come from the dict
    opt2.load_state_dict(loaded["opt"])
    assert (opt2.steps, opt2.seed, opt2.quick_steps) == (13, 5, 2)
    assert (opt2.param_groups[0]["lr"], opt2.param_groups[0]["lr0"]) == (5e-3, 1e-2)
    train(model2, opt2, x, y, 17)
    assert all_equal(model.parameters(), model2.parameters())
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert all(torch.equal(opt.state[p][k], opt2.state[p2][k]) for k in opt.state[p])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.desc)
def test_every_configuration_resumes_bit_for_bit(config):
    """13 steps (warm-up, sampling and quick steps), a ``weights_only`` save and a load into
    an optimizer built with defaults, 9 more steps: the same parameters, state and groups
    as the run that went on. The table's lr changes (late in its runs) come at steps 11, 12."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=LR, seed=11, **config.kwargs)
    changes = dict(zip((11, 12), (lr for _, lr in sorted(config.lr_at.items()))))
    for n in range(1, 14):
        if n in changes:
            opt.param_groups[0]["lr"] = changes[n]
        train(model, opt, x, y, 1)
    loaded = torch.load(saved(model, opt), weights_only=True)
    train(model, opt, x, y, 9)

    model2 = problem()[0]
    model2.load_state_dict(loaded["model"])
    opt2 = Alice(model2.parameters(), lr=LR)
    opt2.load_state_dict(loaded["opt"])
    train(model2, opt2, x, y, 9)
    assert all_equal(model.parameters(), model2.parameters())
    assert same_state(opt.state_dict()["state"], opt2.state_dict()["state"])
    hyper = lambda o: [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]  # noqa: E731
    assert hyper(opt2) == hyper(opt)


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


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))],
                         ids=["deepcopy", "pickle"])
def test_copies_of_model_and_optimizer_continue_identically(duplicate):
    model, x, y = quadratic()
    opt = Alice(model.parameters(), lr=1e-2, seed=9, quick_steps=2)
    train(model, opt, x, y, 12)
    model2, opt2 = duplicate((model, opt))
    counters = lambda o: (o.steps, o.calls, o.seed, o.skipped_steps, o.quick_steps, o.warmup_steps)  # noqa: E731
    assert counters(opt2) == counters(opt) == (12, 12, 9, 0, 2, 10)
    train(model, opt, x, y, 7)
    train(model2, opt2, x, y, 7)
    assert all_equal(model.parameters(), model2.parameters())


@pytest.mark.parametrize("how", ["load_state_dict", "deepcopy"])
def test_closure_free_eval_mode_survives_loading_and_copying(how):
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, closure_free=True)
    train_closure_free(model, opt, x, y, 6)
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
        train_closure_free(m, o, x, y, 5)
    assert torch.equal(flat(model), flat(reference[0]))


@pytest.mark.parametrize("calls", [60, 61, 62], ids=["at-center", "at-plus", "at-minus"])
def test_a_dict_without_the_step_in_progress_keeps_mu_in_closure_free_training(calls):
    """A dict that lacks the closure-free step in progress (saved in closure mode, or by a
    tool that keeps only the averages) loaded while the parameters hold an evaluation
    point: the centre stays ``mu`` (before the fix it became the point, off by sigma)."""
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3, closure_free=True)
    train_closure_free(model, opt, x, y, calls)  # past the warm-up: offsets are not zero
    state_dict = opt.state_dict()
    for entry in state_dict["state"].values():
        for key in ("mu", "grad_plus", "grad_minus"):
            entry.pop(key, None)
    for group in state_dict["param_groups"]:
        group.pop("phase", None)
        group.pop("pending_sigma", None)
    opt.eval()
    mu = flat(model).clone()
    opt.train()
    assert opt.evaluation is not None and not torch.equal(flat(model), mu)  # the parameters hold a point
    opt.load_state_dict(state_dict)
    opt.eval()
    assert torch.equal(flat(model), mu)


# -- wrong checkpoints are refused, and older ones load -----------------------------------


@pytest.mark.parametrize("case", LOAD_ERRORS, ids=lambda c: c.desc)
def test_a_wrong_checkpoint_is_refused_and_changes_nothing(case):
    _, opt = trained()
    state_dict = case.edit(opt.state_dict())
    model, other = fresh_like()
    before = flat(model).clone()
    with pytest.raises(ValueError, match=case.regex):
        other.load_state_dict(state_dict)
    assert torch.equal(flat(model), before) and other.calls == 0


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
    for state_dict, message in [(good, r"shape \(1, 5\).*shape \(1, 4\)"), (bad_groups, "2 param groups")]:
        with pytest.raises(ValueError, match=message):
            opt_other.load_state_dict(state_dict)
        after = opt_other.state_dict()
        assert after["alice"] == before["alice"] and after["param_groups"] == before["param_groups"]
        assert same_state(before["state"], after["state"])
    extra = nn.Linear(5, 1)
    with pytest.raises(ValueError, match=re.escape("param group 0 has 3 parameters but this optimizer's has 2")):
        Alice(extra.parameters()).load_state_dict(
            {**good, "param_groups": [{**good["param_groups"][0], "params": [0, 1, 2]}]}
        )


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


def test_a_dict_of_the_previous_format_loads():
    """Format 1 kept ``nu`` per parameter and the counters under ``"alice"``."""
    model, opt = trained()
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


# -- torch's tools: DCP and state-dict hooks ----------------------------------------------


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
    assert all_equal(model.parameters(), model2.parameters())


def test_state_dict_hooks_see_everything_and_a_saved_dict_is_a_consistent_snapshot():
    model, x, y = problem()
    opt = Alice(model.parameters(), lr=1e-2, seed=3)
    seen = {}
    opt.register_state_dict_post_hook(lambda o, sd: seen.update(sd=copy.deepcopy(sd)))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.update(loaded=sd))
    train(model, opt, x, y, 12)
    returned = opt.state_dict()
    train(model, opt, x, y, 5)  # training on does not change what was returned
    assert returned["param_groups"][0]["calls"] == 12
    assert all(s["step"] == 12 for s in returned["state"].values())
    assert all(torch.equal(returned["state"][i]["G"], seen["sd"]["state"][i]["G"]) for i in returned["state"])
    opt.load_state_dict(returned)
    assert seen["loaded"] is not returned and seen["loaded"]["state"] is returned["state"]  # a shallow copy, as torch
    assert opt.calls == 12
