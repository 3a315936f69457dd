"""What reading Alice's diagnostics costs: optimizer time per step with and without
``diagnostics(opt)`` every N steps, and the cost of one reading.

Gradients are handed over by a closure that does no work, so the figures are the
optimizer's own time: the denominator is as small as it gets, and the overhead
reported is the worst case (with a model's forward and backward it is smaller).
Keeping the statistics costs nothing per step (nothing is recorded); the only
cost is the reading itself, one pass over the state and one transfer to the host.
Variants run interleaved, repeated; the median over repeats and the spread
(min..max) are reported. Two estimates of the overhead: end to end (the runs with
readings against the run without: on a shared or throttled machine its noise can
exceed the effect), and by components (one reading's cost over ``every`` steps'
cost, both timed interleaved: the figure to quote).

    python benchmarks/diagnostics_overhead.py [--numel 4194304] [--tensors 16] [--every 100]
        [--steps 200] [--repeats 5] [--device cpu|cuda] [--threads N] [--json PATH]

The first reading of a run of state of 2**20 elements or more compiles a kernel (as the
optimizer's fused path does); the warm-up includes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from alice import Alice
from alice.diagnostics import diagnostics


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make(numel: int, tensors: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = max(1, numel // (tensors * 1024))
    params = [torch.nn.Parameter(torch.randn(rows, 1024, generator=g).to(device)) for _ in range(tensors)]
    grads = [torch.randn(rows, 1024, generator=g).to(device) for _ in range(tensors)]
    opt = Alice(params, lr=1e-3, seed=0)
    loss = torch.zeros((), device=device)

    def closure():
        for p, gr in zip(params, grads):
            p.grad.copy_(gr)  # p.grad is Alice's buffer: write into it, as backward would
        return loss

    return opt, closure


def run(opt, closure, steps: int, every: int | None, per_param: bool, device) -> float:
    """Seconds per step over ``steps`` steps, reading every ``every`` steps (None: never)."""
    sync(device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        opt.step(closure)
        if every and i % every == 0:
            diagnostics(opt, per_param=per_param)
    sync(device)
    return (time.perf_counter() - start) / steps


def one_reading(opt, per_param: bool, device, calls: int = 5) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        diagnostics(opt, per_param=per_param)
    sync(device)
    return (time.perf_counter() - start) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--every", type=int, default=100, help="steps between two readings")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat (a multiple of --every)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    variants = {
        "never": dict(every=None, per_param=False),
        f"every {args.every}": dict(every=args.every, per_param=False),
        f"every {args.every}, per_param": dict(every=args.every, per_param=True),
    }
    opts = {name: make(args.numel, args.tensors, device) for name in variants}
    for opt, closure in opts.values():  # warm-up (and the compile of the fused path, where it runs)
        run(opt, closure, 24, None, False, device)
        diagnostics(opt, per_param=True)
    times = {name: [] for name in variants}
    readings = {False: [], True: []}
    for _ in range(args.repeats):
        for name, v in variants.items():
            opt, closure = opts[name]
            times[name].append(run(opt, closure, args.steps, v["every"], v["per_param"], device))
        for per_param in (False, True):
            readings[per_param].append(one_reading(opts["never"][0], per_param, device))
    base = statistics.median(times["never"])
    base_min = min(times["never"])
    header = (f"device {device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads); {args.numel:,} elements in {args.tensors} tensors; "
              f"{args.steps} steps x {args.repeats} repeats after 24 warm-up steps; closure does no work")
    print(header)
    print(f"{'variant':<28}{'ms/step (median)':>18}{'min..max':>18}{'end to end':>12}{'(on mins)':>11}")
    result = {"header": header, "args": vars(args), "variants": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        over, over_min = (med - base) / base, (min(ts) - base_min) / base_min
        print(f"{name:<28}{med * 1e3:>18.3f}{f'{min(ts) * 1e3:.3f}..{max(ts) * 1e3:.3f}':>18}"
              f"{over:>+12.2%}{over_min:>+11.2%}")
        result["variants"][name] = {"ms_per_step": [t * 1e3 for t in ts], "overhead": over, "overhead_min": over_min}
    print(f"{'by components':<28}{'ms (median)':>18}{'min..max':>18}{'reading / (' + str(args.every) + ' steps)':>23}")
    for per_param, rs in readings.items():
        med = statistics.median(rs)
        label = "one reading" + (", per_param" if per_param else "")
        print(f"{label:<28}{med * 1e3:>18.3f}{f'{min(rs) * 1e3:.3f}..{max(rs) * 1e3:.3f}':>18}"
              f"{med / (args.every * base):>+23.2%}")
        result[label] = {"ms": [r * 1e3 for r in rs], "per_every": med / (args.every * base)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
