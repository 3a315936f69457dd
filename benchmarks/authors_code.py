"""alice.Alice side by side with the authors' CUDA implementation (sandialabs/alice).

Needs a CUDA device, nvcc, and a checkout of https://github.com/sandialabs/alice
(not part of this repository; pass its path). Their extension is JIT-built with
``torch.utils.cpp_extension.load`` and their optimizer module loaded from the
checkout under another name; nothing of theirs is copied here.

1. Trajectories: a separable nonsmooth objective (per coordinate a quadratic bowl
   plus ReLU kinks near the start), float32 on CUDA. Being separable, every
   coordinate's path is independent of the Rademacher signs, so both codes must
   agree up to float32 rounding and the documented differences (their warm-up is
   9 steps at beta1 = 0.9, a float32 comparison; beta1 = 0.75 makes it exact for
   both; their glass constant is 0.238732).
2. Speed: time per step, closure = a linear loss whose gradient is a fixed tensor
   (the same cheap forward/backward for every optimizer), interleaved repeats.

    python benchmarks/authors_code.py --authors-repo third_party/sandialabs-alice
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from alice import Alice


def load_authors_alice(repo: Path):
    """Build their extension and import their optimizer module as ``sandia_alice``."""
    from torch.utils.cpp_extension import load

    kernel = repo / "src/alice/alice11_fused_cuda/alice11_fused.cu"
    sys.modules["alice11_fused_cuda"] = load("alice11_fused_cuda", [str(kernel)], extra_cuda_cflags=["-O3"])
    spec = importlib.util.spec_from_file_location("sandia_alice", repo / "src/alice/alice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = module.Alice
    if not hasattr(cls, "_cuda_graph_capture_health_check"):  # renamed in torch >= 2.6
        cls._cuda_graph_capture_health_check = torch.optim.Optimizer._accelerator_graph_capture_health_check
    return cls


# -- 1. trajectories -------------------------------------------------------------


def separable_problem(numel=4096, lr=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(numel, generator=g) * 2 - 1
    a = 0.5 + 1.5 * torch.rand(numel, generator=g)
    c = x0 + lr * (10 * torch.rand(numel, generator=g) - 5)
    kinks = x0[:, None] + lr * (6 * torch.rand(numel, 3, generator=g) - 3)
    slopes = 0.06 * torch.rand(numel, 3, generator=g) - 0.03
    to = lambda t: t.cuda()  # noqa: E731
    return to(x0), (to(a), to(c), to(kinks), to(slopes))


def objective(x, coeffs):
    a, c, kinks, slopes = coeffs
    return (0.5 * a * (x - c) ** 2).sum() + (slopes * torch.relu(x[:, None] - kinks)).sum()


def trajectory(make_opt, theirs: bool, steps: int, x0, coeffs):
    p = torch.nn.Parameter(x0.clone())
    coeffs = [c.to(x0.dtype) for c in coeffs]
    opt = make_opt([p])
    path = []
    for _ in range(steps):
        if theirs:
            opt.step((lambda: p, lambda out: objective(out, coeffs)))
        else:

            def closure():
                opt.zero_grad()
                loss = objective(p, coeffs)
                loss.backward()
                return loss

            opt.step(closure)
        path.append(p.detach().clone())
    return torch.stack(path)


def compare_trajectories(TheirAlice, steps=200):
    """Both float32 paths against alice.Alice in float64: if the authors' code follows
    the same rules, its distance from the float64 path is of the order of our own
    float32 path's (the floor set by float32 rounding, amplified at the kinks)."""
    x0, coeffs = separable_problem()
    print(f"Trajectories: separable objective, {x0.numel()} coordinates, lr=1e-2, {steps} steps; "
          "max |x - x_f64| / max |x_f64 - x0| after steps 10, 50, 200")
    print(f"{'setting':32s} {'alice.Alice float32':>26s} {'sandialabs float32':>26s}")
    settings = {
        "beta1=0.75 (same warm-up)": dict(betas=(0.75, 0.999)),
        "beta1=0.75, rms, fixed bounds": dict(betas=(0.75, 0.999), hess_comp="rms", limit_method="fixed"),
        "beta1=0.75, glass only, q=0": dict(betas=(0.75, 0.999), hess_comp="zero", quick_steps=0),
        "beta1=0.75, w1, w2, sgdm": dict(betas=(0.75, 0.999), w1=1e-3, w2=0.1, limit_method="sgdm", lr_min=0.5, lr_max=1.0),
        "defaults (beta1=0.9)": dict(),
    }

    def error(path, exact):
        moved = (exact - x0.double()).abs().max().clamp_min(1e-30)
        rel = (path.double() - exact).abs().amax(dim=1) / moved
        return " ".join(f"{float(rel[:n].max()):8.1e}" for n in (10, 50, steps))

    for name, kwargs in settings.items():
        exact = trajectory(lambda ps: Alice(ps, lr=1e-2, seed=0, **kwargs), False, steps, x0.double(), coeffs)
        ours = trajectory(lambda ps: Alice(ps, lr=1e-2, seed=0, **kwargs), False, steps, x0, coeffs)
        theirs = trajectory(lambda ps: TheirAlice(ps, lr=1e-2, **kwargs), True, steps, x0, coeffs)
        print(f"{name:32s} {error(ours, exact):>26s} {error(theirs, exact):>26s}")


# -- 2. speed ----------------------------------------------------------------------


def time_steps(opt, params, grads, steps, theirs: bool):
    def linear():
        return sum((p * g).sum() for p, g in zip(params, grads))

    def closure():
        opt.zero_grad()
        loss = linear()
        loss.backward()
        return loss

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step((lambda: None, lambda _: linear())) if theirs else opt.step(closure)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def compare_speed(TheirAlice, numel, repeats=5):
    rows = numel // (4 * 1024)
    variants = {
        "Adam(foreach=True)": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False),
        "alice.Alice (fused)": (lambda ps: Alice(ps, seed=0, fused=True), False),
        "alice.Alice (foreach)": (lambda ps: Alice(ps, seed=0, foreach=True), False),
        "sandialabs Alice": (lambda ps: TheirAlice(ps), True),
    }
    runs = {}
    for name, (make, theirs) in variants.items():
        params = [torch.nn.Parameter(torch.randn(rows, 1024, device="cuda")) for _ in range(4)]
        grads = [torch.randn_like(p) * 1e-2 for p in params]
        opt = make(params)
        time_steps(opt, params, grads, 16, theirs)  # past warm-up and compilation
        runs[name] = (opt, params, grads, theirs)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (opt, params, grads, theirs) in runs.items():
            times[name].append(time_steps(opt, params, grads, 8, theirs))
    base = statistics.median(times["Adam(foreach=True)"])
    print(f"\nSpeed: {numel:,} float32 parameters in 4 tensors, quick_steps=3, {repeats} x 8 steps, "
          "closure = linear loss (same cost for all)")
    print(f"{'optimizer':24s} {'ms/step (median)':>17s} {'min-max':>15s} {'ratio to Adam':>14s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} {1e3 * med:17.3f} {1e3 * min(ts):7.3f}-{1e3 * max(ts):<7.3f} {med / base:14.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", type=Path, required=True)
    parser.add_argument("--numel", type=int, nargs="+", default=[4 * 2**20, 64 * 2**20])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("The authors' code runs on CUDA only: no CUDA device here.")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    TheirAlice = load_authors_alice(args.authors_repo)
    compare_trajectories(TheirAlice)
    for numel in args.numel:
        compare_speed(TheirAlice, numel)


if __name__ == "__main__":
    main()
