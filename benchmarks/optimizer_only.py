"""The optimizer's own work per step, against torch's fused Adam, at a given size.

Every optimizer gets its gradients from a closure that hands over fixed tensors
(``--handover``: copied into ``p.grad``, the default and the cheapest; assigned as
``p.grad``; or by a backward pass), timed alone and subtracted, so what remains
is the optimizer's work: for Alice, averaged over whole periods of
``quick_steps + 1`` steps after warm-up. The device-to-device copy bandwidth
of the same run is printed beside it, with Alice's bytes per element and the
bandwidth they imply, and a profile of the kernels of one period.

    python benchmarks/optimizer_only.py --numel 100000000 --tensors 6 \\
        --optimizer adam,fused=True --optimizer alice [--log results.jsonl]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common import SyncCounter, parse_optimizer, synchronize, timed, versions, write_log


HANDOVERS = {
    "copy": "p.grad.copy_(g) (a fresh p.grad = g.clone() where p.grad is None)",
    "assign": "p.grad = g",
    "backward": "opt.zero_grad(); backward of sum(p * g), whose gradient is g",
}


def gradient_closure(params, grads, loss, handover, opt):
    """The closure handing the fixed gradients ``grads`` over as ``handover`` says (HANDOVERS)."""
    def closure():
        if handover == "backward":
            opt.zero_grad()
            with torch.enable_grad():
                sum((p * g).sum() for p, g in zip(params, grads)).backward()
            return loss
        for p, g in zip(params, grads):
            if handover == "assign":
                p.grad = g
            elif p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        return loss

    return closure


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=100_000_000)
    parser.add_argument("--tensors", type=int, default=6)
    parser.add_argument("--optimizer", action="append", default=None)
    parser.add_argument("--handover", choices=list(HANDOVERS), default="copy",
                        help="how the closure hands the gradients over: " + "; ".join(
                            f"{k}: {v}" for k, v in HANDOVERS.items()))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="print the kernels of one Alice period")
    parser.add_argument("--log")
    args = parser.parse_args()
    specs = [parse_optimizer(s) for s in (args.optimizer or ["adam,fused=True", "alice"])]
    device = args.device
    sizes = [args.numel // args.tensors] * args.tensors
    torch.manual_seed(0)

    copy_src = torch.randn(args.numel, device=device)
    copy_dst = torch.empty_like(copy_src)
    copy_s = statistics.median(timed(lambda: copy_dst.copy_(copy_src), 10, device) for _ in range(3))
    bandwidth = 8 * args.numel / copy_s

    runs = {}
    for spec in specs:
        params = [torch.nn.Parameter(torch.randn(n, device=device)) for n in sizes]
        grads = [torch.randn_like(p) * 1e-2 for p in params]
        opt = spec.make(params)
        closure = gradient_closure(params, grads, torch.zeros((), device=device), args.handover, opt)
        step = (lambda o=opt, c=closure: o.step(c)) if spec.needs_closure else (lambda o=opt, c=closure: (c(), o.step()))
        period = getattr(opt, "quick_steps", 0) + 1
        warm = -(-(getattr(opt, "warmup_steps", 0) + 1) // period) * period + period
        for _ in range(warm):
            step()
        calls = (3 + period - 1) / period if spec.needs_closure else 1.0  # closure calls per step
        runs[spec.text] = (opt, step, closure, period, calls)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (opt, step, closure, period, calls) in runs.items():
            total = timed(step, 2 * period, device)
            alone = timed(closure, 8, device)
            opt.zero_grad()  # those gradients were for timing only
            times[name].append(total - calls * alone)
    syncs = {}
    for name, (opt, step, *_rest) in runs.items():
        with SyncCounter() as counter:
            for _ in range(runs[name][3]):
                step()
        syncs[name] = counter.count / runs[name][3]
    base = statistics.median(times[specs[0].text])
    print(f"{versions()}")
    print(f"{args.numel:,} float32 parameters in {args.tensors} tensors on {device}, gradients by {args.handover}; copy bandwidth "
          f"{bandwidth / 1e9:.0f} GB/s (read + write); {args.repeats} repeats, median")
    print(f"{'optimizer':34s} {'ms/step':>9s} {'ratio':>7s} {'B/elem at copy bw':>18s} {'syncs/step':>11s}")
    results = []
    for name, ts in times.items():
        med = statistics.median(ts)
        equiv = med * bandwidth / args.numel
        print(f"{name:34s} {1e3 * med:9.3f} {med / base:7.2f} {equiv:18.1f} {syncs[name]:11.2f}")
        results.append(dict(optimizer=name, ms=1e3 * med, ratio=med / base, bytes_per_elem_at_copy_bw=equiv,
                             syncs_per_step=syncs[name], spread_ms=[1e3 * min(ts), 1e3 * max(ts)]))
    if args.profile and torch.device(device).type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        for name, (opt, step, _c, period, _calls) in runs.items():
            if not name.startswith("alice"):
                continue
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(period):
                    step()
                synchronize(device)
            print(f"\nKernels of one period of {name} ({period} steps):")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
    write_log(args.log, dict(numel=args.numel, tensors=args.tensors, handover=args.handover, copy_gbps=bandwidth / 1e9, rows=results))


if __name__ == "__main__":
    main()
