"""Alice through Hugging Face Accelerate (CPU): the closure loop that returns the
loss, bf16, fp16 loss scaling (refused in closure mode, working closure-free),
Accelerate's accumulation (refused in closure mode, working closure-free)."""

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate", reason="accelerate is an optional extra (pip install alice-optimizer[hf])")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from alice import Alice, LoopError  # noqa: E402
from alice.integrations.accelerate import alice_step, micro_batch_closure  # noqa: E402
from helpers import flat, linear_loader as loader, small_mlp as make_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; each test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def mse(model):
    return lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1])


def exact_run(accelerator, epochs=2, micro=1, max_grad_norm=None):
    model = make_model()
    model, opt, data = accelerator.prepare(model, Alice(model.parameters(), lr=1e-2, seed=0), loader())
    losses = []
    for _ in range(epochs):
        for x, y in data:
            micro_batches = list(zip(x.chunk(micro), y.chunk(micro)))
            closure = micro_batch_closure(accelerator, mse(model), micro_batches, opt, max_grad_norm=max_grad_norm)
            losses.append(alice_step(accelerator, opt, closure))
    return model, opt, losses


def test_accelerated_optimizer_drops_the_loss_alice_step_returns_it():
    accelerator = Accelerator(cpu=True)
    model, opt, losses = exact_run(accelerator, epochs=4)
    assert all(isinstance(loss, torch.Tensor) and loss.ndim == 0 for loss in losses)
    assert sum(losses[-8:]) < sum(losses[:8])
    x, y = next(iter(loader()))
    assert opt.step(lambda: mse(model)((x, y)).backward() or torch.tensor(1.0)) is None  # Accelerate's wrapper

    AcceleratorState._reset_state(True)
    plain = make_model()
    alice = Alice(plain.parameters(), lr=1e-2, seed=0)
    for _ in range(2):
        for batch in loader():
            alice.step(lambda batch=batch: mse(plain)(batch).backward() or torch.tensor(0.0))
    model2, _, _ = exact_run(Accelerator(cpu=True))
    torch.testing.assert_close(flat(model2), flat(plain), rtol=0, atol=0)  # the same trajectory as without Accelerate


def test_micro_batches_in_one_closure_equal_the_full_batch():
    full, _, _ = exact_run(Accelerator(cpu=True))
    AcceleratorState._reset_state(True)
    split, _, _ = exact_run(Accelerator(cpu=True), micro=2)
    torch.testing.assert_close(flat(split), flat(full), rtol=1e-5, atol=1e-6)


def test_bf16_mixed_precision_runs_the_closure_three_times_on_sampling_steps():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = make_model()
    model, opt, data = accelerator.prepare(model, Alice(model.parameters(), lr=1e-2, seed=0), loader())
    calls = []

    def compute_loss(batch):
        calls.append(find(opt).evaluation)
        out = model(batch[0])
        return nn.functional.mse_loss(out.float(), batch[1])

    for batch in data:
        loss = alice_step(accelerator, opt, micro_batch_closure(accelerator, compute_loss, [batch]))
        assert torch.isfinite(loss)
    assert calls[:3] == ["plus", "minus", "center"] and len(calls) == 3 * 8  # 8 warm-up steps


def find(opt):
    from alice.integrations import find_alice

    return find_alice(opt)


def test_max_grad_norm_clips_every_evaluation_by_one_factor():
    _, opt, losses = exact_run(Accelerator(cpu=True), epochs=1, max_grad_norm=1e-3)
    assert all(torch.isfinite(loss) for loss in losses)


def fp16_accelerator(**kwargs):
    """On a GPU, mixed_precision='fp16' gives the accelerator a GradScaler; on CPU
    Accelerate gives none, so the test hands it one (what a GPU run would have)."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16", **kwargs)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    return accelerator


def test_fp16_loss_scaling_is_refused_in_closure_mode_with_the_fix():
    with pytest.raises(LoopError, match="bf16.*closure_free=True"):
        exact_run(fp16_accelerator())


def usual_loop(accelerator, opt_kwargs, epochs=3, accumulate=False):
    model = make_model()
    model, opt, data = accelerator.prepare(model, Alice(model.parameters(), **opt_kwargs), loader())
    for _ in range(epochs):
        for batch in data:
            with accelerator.accumulate(model) if accumulate else torch.enable_grad():
                accelerator.backward(mse(model)(batch))
                opt.step()
                opt.zero_grad()
    return model, opt


def test_fp16_loss_scaling_closure_free_trains():
    model, opt = usual_loop(fp16_accelerator(), dict(lr=5e-2, seed=0, closure_free=True), epochs=12)
    opt.eval()
    x, y = next(iter(loader(batch_size=256)))
    assert nn.functional.mse_loss(model(x), y).item() < 0.5 * nn.functional.mse_loss(make_model()(x), y).item()


def test_accelerate_accumulation():
    kwargs = dict(gradient_accumulation_steps=2, cpu=True)
    with pytest.raises(LoopError, match="gradient_accumulation_steps=2.*micro_batch_closure"):
        exact_run(Accelerator(**kwargs))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(**kwargs)  # closure mode inside accumulate(): refused by Alice itself
    model = make_model()
    model, opt, data = accelerator.prepare(model, Alice(model.parameters(), lr=1e-2, seed=0), loader())
    with pytest.raises(LoopError, match="accumulate.*alice_step"):
        for batch in data:
            with accelerator.accumulate(model):
                accelerator.backward(mse(model)(batch))
                opt.step(lambda batch=batch: mse(model)(batch).backward() or torch.tensor(0.0))
    # closure-free: accumulating two batches of 32 equals one batch of 64
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accumulated, _ = usual_loop(Accelerator(**kwargs), dict(lr=1e-2, seed=0, closure_free=True), accumulate=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    model = make_model()
    model, opt, data = accelerator.prepare(model, Alice(model.parameters(), lr=1e-2, seed=0, closure_free=True),
                                           loader(batch_size=64))
    for _ in range(3):
        for batch in data:
            accelerator.backward(mse(model)(batch))
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(flat(accumulated), flat(model), rtol=1e-5, atol=1e-6)
