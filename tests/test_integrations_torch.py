"""Alice in plain torch loops (issue 14's rows without a framework): GradScaler,
accumulation by the loop, schedules that reach lr = 0, the closure-free mode's
protocol, and the framework-free helpers of ``alice.integrations``."""

import subprocess
import sys

import pytest
import torch

from alice import Alice, ClosureError, LoopError
from alice.integrations import ConsistentClip, at_center, find_alice
from helpers import closure_for, flat, linear_data as data, mse as loss_of, small_mlp as make_model

pytestmark = pytest.mark.usefixtures("one_thread")


# -- closure mode refuses what it cannot do exactly, naming both fixes -------------------

def test_gradscaler_in_closure_mode_names_both_ways():
    model = make_model()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # no fp16 overflow: the step is taken
    x, y = data()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_of(model, x, y)
    scaler.scale(loss).backward()
    with pytest.raises(ClosureError, match="closure_free=True") as info:
        scaler.step(opt)
    assert "closure" in str(info.value)


def test_accumulation_before_closure_step_is_refused():
    model = make_model()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    x, y = data()
    loss_of(model, x[:32], y[:32]).backward()  # the usual torch accumulation, first micro-batch
    with pytest.raises(LoopError, match="inside the closure"):
        opt.step(lambda: loss_of(model, x[32:], y[32:]).backward() or loss_of(model, x[32:], y[32:]))


def test_accumulation_inside_the_closure_is_exact():
    """Two half-batches accumulated in the closure = the full batch (mean loss)."""
    x, y = data()
    finals = []
    for halves in (False, True):
        model = make_model()
        opt = Alice(model.parameters(), lr=1e-2, seed=0)

        def closure():
            parts = [(x[:32], y[:32]), (x[32:], y[32:])] if halves else [(x, y)]
            total = 0.0
            for xb, yb in parts:
                loss = loss_of(model, xb, yb) / len(parts)
                loss.backward()
                total = total + loss.detach()
            return total

        for _ in range(14):
            opt.step(closure)
        finals.append(flat(model))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)


# -- closure-free mode: GradScaler, accumulation, schedules -----------------------------

def closure_free_loop(model, opt, batches, scaler=None, accumulate=1, scheduler=None, clip=None):
    opt.train()
    losses = []
    for i, (xb, yb) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            loss = loss_of(model, xb, yb) / accumulate
        (scaler.scale(loss) if scaler else loss).backward()
        losses.append(loss.item() * accumulate)
        if (i + 1) % accumulate:
            continue
        if scaler:
            scaler.unscale_(opt)
        if clip:
            clip(opt)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        if scheduler:
            scheduler.step()
    opt.eval()
    return losses


def batches(n_steps, size=16, seed=1):
    x, y = data(n_steps * size, seed)
    return list(zip(x.split(size), y.split(size)))


def test_closure_free_with_gradscaler_trains_and_skips_keep_the_phase():
    model = make_model()
    opt = Alice(model.parameters(), lr=5e-2, seed=0, closure_free=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = data(256)
    before = loss_of(model, x, y).item()
    closure_free_loop(model, opt, batches(150), scaler=scaler)
    assert loss_of(model, x, y).item() < 0.5 * before
    # A step that overflows in fp16 is skipped by the scaler: step() is not called and
    # the parameters stay at the point where the next gradient is needed.
    opt.train()
    phase, point, calls = opt.evaluation, flat(model), opt.calls
    scaler.scale(loss_of(model, x, y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    assert (opt.evaluation, opt.calls) == (phase, calls)
    torch.testing.assert_close(flat(model), point, rtol=0, atol=0)


def test_closure_free_accumulation_equals_the_full_batch():
    finals = []
    for accumulate in (1, 2):
        model = make_model()
        opt = Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True)
        closure_free_loop(model, opt, batches(40 * accumulate, size=32 // accumulate), accumulate=accumulate)
        finals.append(flat(model))
    torch.testing.assert_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)


def test_closure_free_with_the_same_batch_three_times_is_exact_alice():
    """Feeding a sampling step's three calls the same batch gives exact Alice."""
    x, y = data(32)
    exact, free = make_model(), make_model()
    opt_exact = Alice(exact.parameters(), lr=1e-2, seed=0)
    opt_free = Alice(free.parameters(), lr=1e-2, seed=0, closure_free=True)
    closure = closure_for(opt_exact, exact, x, y)
    for _ in range(16):
        opt_exact.step(closure)
    opt_free.train()
    while opt_free.calls < 16:  # a sampling step takes three calls, a quick step one
        loss_of(free, x, y).backward()
        opt_free.step()
        opt_free.zero_grad()
    opt_free.eval()
    torch.testing.assert_close(flat(free), flat(exact), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("closure_free", [False, True])
@pytest.mark.parametrize("schedule", ["cosine_to_zero", "warmup_from_zero"])
def test_schedules_that_reach_lr_zero(closure_free, schedule):
    model = make_model()
    opt = Alice(model.parameters(), lr=5e-2, seed=0, closure_free=closure_free)
    n = 90 if closure_free else 40  # closure-free: a sampling step (the whole warm-up) takes 3 batches
    if schedule == "cosine_to_zero":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n, eta_min=0.0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 5))
    x, y = data(256)
    before = loss_of(model, x, y).item()
    if closure_free:
        closure_free_loop(model, opt, batches(n), scheduler=sched)
    else:
        for xb, yb in batches(n):
            opt.step(lambda xb=xb, yb=yb: loss_of(model, xb, yb).backward() or loss_of(model, xb, yb).detach())
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0 if schedule == "cosine_to_zero" else 5e-2, abs=1e-12)
    assert torch.isfinite(flat(model)).all()
    assert loss_of(model, x, y).item() < before
    # at lr = 0 a step changes nothing (closure-free: once the step planned before
    # the lr reached 0 is complete, the parameters hold nu and stay there)
    for group in opt.param_groups:
        group["lr"] = 0.0

    def one_call(xb, yb):
        if closure_free:
            loss_of(model, xb, yb).backward()
            opt.step()
            opt.zero_grad()
        else:
            opt.step(lambda: loss_of(model, xb, yb).backward() or loss_of(model, xb, yb).detach())

    opt.train()
    for xb, yb in batches(3, seed=5):
        one_call(xb, yb)
    point, calls = flat(model), opt.calls
    for xb, yb in batches(5, seed=6):
        one_call(xb, yb)
    assert opt.calls == calls
    torch.testing.assert_close(flat(model), point, rtol=0, atol=0)
    opt.eval()


# -- the helpers ------------------------------------------------------------------

def test_importing_alice_and_its_integrations_package_imports_no_framework():
    code = ("import sys, alice, alice.integrations; "
            "loaded = [m for m in ('transformers', 'accelerate', 'lightning', 'pytorch_lightning', 'timm') "
            "if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


class Wrapper:  # stands for AcceleratedOptimizer / LightningOptimizer
    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_find_alice_and_at_center():
    model = make_model()
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    assert find_alice(Wrapper(Wrapper(opt))) is opt
    assert find_alice([torch.optim.SGD(make_model().parameters(), lr=0.1), Wrapper(opt)]) is opt
    assert find_alice(torch.optim.SGD(make_model().parameters(), lr=0.1), required=False) is None
    with pytest.raises(TypeError, match="No alice.Alice"):
        find_alice(torch.optim.SGD(make_model().parameters(), lr=0.1))
    seen = []
    x, y = data()

    def closure():
        seen.append((opt.evaluation, at_center(Wrapper(opt))))
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    assert at_center(opt)
    opt.step(closure)  # warm-up: a sampling step
    assert seen == [("plus", False), ("minus", False), ("center", True)]
    assert at_center(opt) and opt.evaluation is None


def test_consistent_clip_scales_every_evaluation_by_the_first_factor():
    model = make_model()
    opt = Alice(model.parameters(), lr=0.5, seed=0)
    clip = ConsistentClip(max_norm=1e-3)
    x, y = data()
    ratios = []

    def closure():
        loss = loss_of(model, x, y)
        loss.backward()
        before = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()
        norm = clip(opt)
        after = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        ratios.append((after.norm() / before.norm()).item())
        assert norm.item() == pytest.approx(before.norm().item(), rel=1e-5)
        return loss

    opt.step(closure)  # sampling: plus, minus, center
    assert len(ratios) == 3 and ratios[0] < 1e-2
    assert ratios[1] == pytest.approx(ratios[0], rel=1e-6) and ratios[2] == pytest.approx(ratios[0], rel=1e-6)
    assert clip.center_norm is not None
    with pytest.raises(ValueError, match="max_norm"):
        ConsistentClip(0.0)
