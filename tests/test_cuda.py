"""The optimizer on CUDA tensors: every path agrees with the CPU run, and the
RNG replay, checkpoints and non-finite handling work there too.

Skipped, with the reason, on machines without CUDA (CI is CPU only; these run
on the device machine, see benchmarks/RESULTS.md).
"""

import pytest
import torch
from torch import nn

from alice import Alice, kernels
from alice._rademacher import rademacher, tensor_key
from configs import PATHS
from helpers import all_equal, closure_of, copies, mse, saved, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def mlp(device, dtype=torch.float64, dropout=0.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))
    return model.to(device=device, dtype=dtype)


def data(device, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 8, generator=g, dtype=dtype).to(device), torch.randn(64, 1, generator=g, dtype=dtype).to(device)


def skip_fused_without_compiler(path):
    if path == "fused" and not kernels.available("cuda"):
        pytest.skip("torch.compile (Triton) unavailable on this CUDA machine")


def run(device, steps=40, dtype=torch.float64, **kwargs):
    model, (x, y) = mlp(device, dtype), data(device, dtype)
    opt = Alice(model.parameters(), lr=1e-2, seed=7, **kwargs)
    train(model, opt, x, y, steps)
    return model, opt


def test_signs_are_the_same_on_cuda():
    key = tensor_key(3, 4)
    assert torch.equal(rademacher(key, 10_000, device="cuda").cpu(), rademacher(key, 10_000))


@pytest.mark.parametrize("path", PATHS)
def test_cuda_trajectory_matches_cpu(path):
    skip_fused_without_compiler(path)
    cpu_model, _ = run("cpu")
    cuda_model, opt = run("cuda", **PATHS[path])
    for a, b in zip(cpu_model.parameters(), cuda_model.parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)
    assert all(t.device.type == "cuda" for s in opt.state.values() for t in s.values())


@pytest.mark.parametrize("path", PATHS)
def test_step_never_waits_for_the_gpu(path):
    """No host sync anywhere in step(): warm-up, sampling and quick steps, a skipped
    step, BatchNorm buffers kept with model=, bf16 parameters."""
    skip_fused_without_compiler(path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1)).cuda()
    model[3].to(torch.bfloat16)
    x, y = data("cuda", torch.float32)
    opt = Alice(model.parameters(), lr=1e-2, seed=0, model=model, **PATHS[path])
    poison = {"on": False}

    def closure():
        opt.zero_grad()
        h = model[2](model[1](model[0](x)))
        loss = nn.functional.mse_loss(model[3](h.to(torch.bfloat16)).float(), y)
        loss = loss * float("nan") if poison["on"] else loss
        loss.backward()
        return loss

    opt.step(closure)  # first call: compiles, probes the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for n in range(2, 20):
            poison["on"] = n == 15
            opt.step(closure)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.skipped_steps == 1 and opt.steps == 18


def test_bfloat16_on_cuda_keeps_float32_state():
    model, opt = run("cuda", dtype=torch.bfloat16, fused=True)
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and opt.state[p]["G"].dtype == torch.float32


def test_cuda_dropout_masks_replayed():
    torch.manual_seed(0)
    drop = nn.Dropout(0.5)
    w = nn.Parameter(torch.ones(4096, device="cuda"))
    opt = Alice([w], lr=1e-3, seed=0)
    masks = []

    def closure():
        opt.zero_grad()
        out = drop(w)
        masks.append(out != 0)
        loss = out.sum()
        loss.backward()
        return loss

    start = torch.cuda.get_rng_state()
    opt.step(closure)
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    after = torch.cuda.get_rng_state()
    torch.cuda.set_rng_state(start)
    drop(w)  # one ordinary evaluation draws the same mask and leaves the same state
    assert torch.equal(after, torch.cuda.get_rng_state())


def test_cuda_resume_is_bit_exact_and_state_follows_the_parameters():
    model, opt = run("cuda", steps=13)
    loaded = torch.load(saved(model, opt), map_location="cpu", weights_only=True)
    x, y = data("cuda")
    train(model, opt, x, y, 11)
    model2 = mlp("cuda")
    model2.load_state_dict(loaded["model"])
    opt2 = Alice(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(loaded["opt"])  # state saved to CPU moves to the parameters' device
    assert all(t.is_cuda for s in opt2.state.values() for t in s.values())
    train(model2, opt2, x, y, 11)
    assert all_equal(model.parameters(), model2.parameters())


def test_cuda_non_finite_step_is_skipped():
    model, (x, y) = mlp("cuda"), data("cuda")
    opt = Alice(model.parameters(), lr=1e-2, seed=0)
    before = copies(model)
    opt.step(closure_of(opt, lambda: mse(model, x, y) * float("nan")))
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert opt.skipped_steps == 1 and opt.steps == 0
    assert all_equal(before, model.parameters())
