"""Cost of the optimizer's own work per step: Alice vs torch.optim.Adam(foreach=True).

Same 4M parameters, gradients handed over by a closure that does no work, so only
the optimizers differ. Alice's figure is averaged over whole periods of
``quick_steps + 1`` steps after warm-up (one sampling step, ``quick_steps``
quick ones). All variants run interleaved in one process, repeated, and the
median over repeats is reported with its spread.

    python benchmarks/cpu_overhead.py [--numel 4194304] [--repeats 7] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alice import Alice


def make_params(numel: int, shapes: int = 4, device="cpu"):
    rows = numel // (shapes * 1024)
    return [torch.nn.Parameter(torch.randn(rows, 1024, device=device)) for _ in range(shapes)]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timer(opt, params, grads, steps: int) -> float:
    device = params[0].device
    loss = torch.zeros((), device=device)

    def closure():  # the cheapest gradient there is: one copy into p.grad
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        return loss

    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.step(closure)
    sync(device)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick-steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    variants = {
        "Adam(foreach=True)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "Alice() (auto: fused)": lambda ps: Alice(ps, quick_steps=args.quick_steps, seed=0),
        "Alice(foreach=True)": lambda ps: Alice(ps, quick_steps=args.quick_steps, seed=0, foreach=True),
        "Alice(foreach=False)": lambda ps: Alice(ps, quick_steps=args.quick_steps, seed=0, foreach=False),
    }
    period = args.quick_steps + 1
    runs = {}
    for name, make in variants.items():
        params = make_params(args.numel, device=args.device)
        grads = [torch.randn_like(p) * 1e-2 for p in params]
        opt = make(params)
        warm = getattr(opt, "warmup_steps", 0)
        warm = -(-(warm + 1) // period) * period + period  # past warm-up, on a period boundary, compiled
        timer(opt, params, grads, warm)
        runs[name] = (opt, params, grads)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (opt, params, grads) in runs.items():
            times[name].append(timer(opt, params, grads, period * 2))
    base = statistics.median(times["Adam(foreach=True)"])
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, {args.numel:,} parameters, "
          f"quick_steps={args.quick_steps}, {args.repeats} repeats of {2 * period} steps")
    print(f"{'optimizer':24s} {'ms/step (median)':>17s} {'min-max':>15s} {'ratio to Adam':>14s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} {1e3 * med:17.2f} {1e3 * min(ts):7.2f}-{1e3 * max(ts):<7.2f} {med / base:14.2f}")


if __name__ == "__main__":
    main()
