"""Where the host time of an Alice training step goes: cProfile of ``opt.step`` on the
ResNet-18 CIFAR workload of ``train_step.py`` (the GPU runs ahead, so a step's
wall time is its host time when the host is the bottleneck).

    python benchmarks/profile_step.py [--precision bf16] [--optimizer alice,...]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import time

import torch

from common import parse_optimizer, versions
from train_step import workload


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet18", "gpt2", "decoder1b"], default="resnet18")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--optimizer", default="alice")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    spec = parse_optimizer(args.optimizer)
    torch.manual_seed(0)
    model, loss_of = workload(args.model, "cuda")
    opt = spec.make(model.parameters(), lr=1e-3)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    host = {"closure": 0.0}

    def closure():
        t = time.perf_counter()
        opt.zero_grad()
        with autocast:
            loss = loss_of(model)
        loss.backward()
        host["closure"] += time.perf_counter() - t
        return loss

    for _ in range(16):
        opt.step(closure)
    torch.cuda.synchronize()
    host["closure"] = 0.0
    t = time.perf_counter()
    for _ in range(args.steps):
        opt.step(closure)
    issue = time.perf_counter() - t
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    print(versions())
    print(f"{args.model} {args.precision} {args.optimizer}: wall {1e3 * wall / args.steps:.2f} ms/step; host issue "
          f"{1e3 * issue / args.steps:.2f} ms/step, of which inside closures {1e3 * host['closure'] / args.steps:.2f}")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        opt.step(closure)
    profiler.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(22)
    stats.sort_stats("cumtime").print_stats(r"alice/|_foreach|compile_wrapper|_C\.", 30)


if __name__ == "__main__":
    main()
