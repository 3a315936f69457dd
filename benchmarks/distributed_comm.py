"""What Alice costs in communication under DDP: gradient all-reduces and time per step.

    torchrun --nproc_per_node 2 benchmarks/distributed_comm.py --model tiny --steps 40

Trains the examples' GPT under DDP with Alice and with AdamW, one after the other,
and reports per step kind (AdamW; Alice's sampling and quick steps after warm-up):
the median time per step, the gradient all-reduces DDP makes (bucket calls, counted
by a comm hook around the default one), the bytes they carry, and the all-reduces
of Alice's skip flag (one byte each). Only the optimizer varies; steps before
``--warmup`` are not timed. ``--log FILE`` appends a JSON line (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import gpt  # noqa: E402  (also puts this checkout's src first on the path)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import alice.distributed  # noqa: E402
from alice import Alice  # noqa: E402
from common import write_log  # noqa: E402


class Counts:
    def __init__(self):
        self.grad_calls = self.grad_bytes = self.flags = 0

    def hook(self, state, bucket):  # DDP comm hook: count, then DDP's own all-reduce
        self.grad_calls += 1
        self.grad_bytes += bucket.buffer().numel() * bucket.buffer().element_size()
        return allreduce_hook(state, bucket)


def run(name, args, rank, world, device):
    torch.manual_seed(0)
    config = gpt.SIZES[args.model]
    model = DDP(gpt.GPT(config).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    counts = Counts()
    model.register_comm_hook(None, counts.hook)
    opt = Alice(model.parameters(), lr=1e-3, seed=0) if name == "alice" else \
        torch.optim.AdamW(model.parameters(), lr=1e-3)
    agree = alice.distributed.agree_flag

    def counted_agree(ok):
        counts.flags += 1
        return agree(ok)

    alice.distributed.agree_flag = counted_agree
    batches = gpt.Batches(args, config, rank, world, device)
    rows = {}
    try:
        for step in range(args.steps):
            x, y = batches(step)

            def closure():
                opt.zero_grad()
                with gpt.autocast(device):
                    loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
                loss.backward()
                return loss

            before = (counts.grad_calls, counts.grad_bytes, counts.flags)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            if name == "alice":
                kind = "alice sampling" if opt.is_sampling_step(opt.calls + 1) else "alice quick"
                opt.step(closure)
            else:
                kind = "adamw"
                closure()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            if step >= args.warmup and (name != "alice" or opt.calls > opt.warmup_steps):
                row = rows.setdefault(kind, {"ms": [], "calls": set(), "bytes": set(), "flags": set()})
                row["ms"].append(1e3 * elapsed)
                row["calls"].add(counts.grad_calls - before[0])
                row["bytes"].add(counts.grad_bytes - before[1])
                row["flags"].add(counts.flags - before[2])
    finally:
        alice.distributed.agree_flag = agree
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(gpt.SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    args.data = "text"
    rank, world, device = gpt.setup()
    results = []
    for name in ("adamw", "alice"):
        for kind, row in run(name, args, rank, world, device).items():
            results.append({"kind": kind, "n": len(row["ms"]), "ms_median": statistics.median(row["ms"]),
                            "ms_min": min(row["ms"]), "ms_max": max(row["ms"]),
                            "grad_allreduces": sorted(row["calls"]), "grad_bytes": sorted(row["bytes"]),
                            "flag_allreduces": sorted(row["flags"])})
    if rank == 0:
        print(f"DDP, {world} x {device.type} ({dist.get_backend()}), {args.model} GPT, batch {args.batch}/rank, "
              f"torch {torch.__version__}; steps {args.warmup}.. of {args.steps} (Alice: after its warm-up)")
        print("| step | n | ms/step median (min-max) | gradient all-reduces | gradient MB | flag all-reduces |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            mb = "/".join(f"{b / 1e6:.2f}" for b in r["grad_bytes"])
            print(f"| {r['kind']} | {r['n']} | {r['ms_median']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f}) | "
                  f"{'/'.join(map(str, r['grad_allreduces']))} | {mb} | {'/'.join(map(str, r['flag_allreduces']))} |")
        write_log(args.log, {"world": world, "model": args.model, "batch": args.batch, "rows": results})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
