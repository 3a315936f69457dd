"""What the curvature instrument costs during training: one reading of
``alice.diagnostics.CurvatureMonitor`` at each cost preset, against one training step
(zero_grad, forward, backward, optimizer step) of the same model, batch and optimizer.

A reading runs ``2 * draws + 1`` forward and backward passes (and, with the fit, 3
forward passes) on its batches; here it measures on the training batch, as the monitor
does by default. Variants run interleaved, repeated; the median over repeats and the
spread (min..max) are reported. Two estimates of the overhead at ``--every``: by
components (one reading over ``every`` steps, the figure to quote) and end to end (a run
with the monitor against one without; on a shared machine its noise can exceed the effect).

    python benchmarks/curvature_monitor_overhead.py [--model mlp|cnn] [--batch 128] [--every 100]
        [--steps 200] [--repeats 5] [--optimizer adamw] [--device cpu|cuda] [--threads N] [--json PATH]

Data are random tensors of MNIST's shape (the cost does not depend on their values).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from alice.diagnostics import COSTS, CurvatureMonitor
from common import parse_optimizer, synchronize, write_log


def model_and_batch(name: str, batch: int, device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 10))
    elif name == "cnn":
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(32 * 7 * 7, 10))
    else:
        raise SystemExit(f"--model {name!r}: expected mlp or cnn")
    g = torch.Generator().manual_seed(seed + 1)
    data = (torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g))
    return model.to(device), tuple(t.to(device) for t in data)


def loss_fn(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def train(model, opt, batch, steps: int, monitor=None) -> float:
    """Seconds per training step over ``steps`` steps, with the monitor after each (or none)."""
    device = batch[0].device
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
        if monitor is not None:
            monitor.step(batch)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def one_reading(monitor, batch, calls: int = 3) -> float:
    synchronize(batch[0].device)
    start = time.perf_counter()
    for _ in range(calls):
        monitor.measure(batch)  # (a reading ends with its numbers on the host: it has synchronised)
    return (time.perf_counter() - start) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=100, help="steps between two readings")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per end-to-end repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--optimizer", default="adamw,lr=1e-3")
    parser.add_argument("--sigma", type=float, default=1e-3, help="the instrument's sigma")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="append the results as one JSON line")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = parse_optimizer(args.optimizer)
    model, batch = model_and_batch(args.model, args.batch, args.device)
    opt = spec.make(model.parameters())
    monitors = {cost: CurvatureMonitor(model, loss_fn, every=args.every, cost=cost, sigma=args.sigma)
                for cost in COSTS}
    train(model, opt, batch, 10)  # warm-up
    for monitor in monitors.values():
        one_reading(monitor, batch, calls=1)
    steps, readings, runs = [], {c: [] for c in COSTS}, {"none": [], **{c: [] for c in COSTS}}
    for _ in range(args.repeats):
        steps.append(train(model, opt, batch, 20))
        for cost, monitor in monitors.items():
            readings[cost].append(one_reading(monitor, batch))
        for name in runs:
            runs[name].append(train(model, opt, batch, args.steps, monitors.get(name)))
    step = statistics.median(steps)
    params = sum(p.numel() for p in model.parameters())
    where = (torch.cuda.get_device_name() if torch.device(args.device).type == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads")
    header = (f"{args.model} ({params:,} parameters), batch {args.batch}, {spec.text}; {where}, "
              f"torch {torch.__version__}; {args.repeats} repeats, interleaved")
    print(header)
    print(f"one training step: {step * 1e3:.2f} ms (median; {min(steps) * 1e3:.2f}..{max(steps) * 1e3:.2f})")
    print(f"{'cost':<10}{'draws':>6}{'layers':>8}{'fit':>5}{'one reading ms':>16}{'min..max':>16}"
          f"{'x step':>8}{f'every {args.every}':>11}{'end to end':>12}")
    result = {"header": header, "args": vars(args), "step_ms": [s * 1e3 for s in steps], "costs": {}}
    base = statistics.median(runs["none"])
    for cost, rs in readings.items():
        med = statistics.median(rs)
        s = COSTS[cost]
        end = statistics.median(runs[cost]) / base - 1
        print(f"{cost:<10}{s['draws']:>6}{'module' if s['layers'] else 'all':>8}{'yes' if s['fit'] else 'no':>5}"
              f"{med * 1e3:>16.2f}{f'{min(rs) * 1e3:.1f}..{max(rs) * 1e3:.1f}':>16}{med / step:>8.1f}"
              f"{med / (args.every * step):>+11.2%}{end:>+12.2%}")
        result["costs"][cost] = {**s, "reading_ms": [r * 1e3 for r in rs], "ratio_to_step": med / step,
                                 "overhead_every": med / (args.every * step), "overhead_end_to_end": end,
                                 "train_ms_per_step": [r * 1e3 for r in runs[cost]]}
    result["train_ms_per_step_without"] = [r * 1e3 for r in runs["none"]]
    write_log(args.json, result)
    return result


if __name__ == "__main__":
    main()
