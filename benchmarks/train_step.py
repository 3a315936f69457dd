"""Whole training steps: Alice against torch's fused Adam/AdamW on the yardstick models.

* ``resnet18``: ResNet-18 in CIFAR geometry (3x3 stride-1 stem, no max-pool),
  batch 100 of 32x32 images, 10 classes; ``--precision fp32`` or ``bf16``
  (autocast, float32 parameters).
* ``gpt2``: a GPT-2-small-shaped decoder (12 layers x 768, 12 heads, context
  1024, vocabulary 50257, untied head: 163M parameters), batch 8, bf16 autocast.
* ``decoder1b``: the same decoder at 24 layers x 2048, 16 heads (1.42B
  parameters), batch 4; its runs take one optimizer at a time (``--alone``).

``--compile`` compiles the model (``torch.compile(model)``; the optimizers stay eager).

Random data (the cost of a step does not depend on it). For each optimizer:
milliseconds per step averaged over whole periods of ``quick_steps + 1`` steps
after warm-up, host syncs per step inside ``step()``, peak memory (of one period,
less what other runs in the process hold: as if alone on the card); plus the
floor of an Alice step measured in the same run (an Adam step plus the extra
forward/backward passes Alice makes: ``(3 + q)/(q + 1) - 1`` per step).

    python benchmarks/train_step.py --model resnet18 --precision fp32 \\
        --optimizer adam,fused=True --optimizer alice [--log results.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from common import SyncCounter, parse_optimizer, timed, versions, write_log


def resnet18_cifar():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab=50257, ctx=1024, d=768, layers=12, heads=12):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


SHAPES = {"gpt2": dict(d=768, layers=12, heads=12, batch=8), "decoder1b": dict(d=2048, layers=24, heads=16, batch=4)}


def workload(name, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    if name == "resnet18":
        model = resnet18_cifar().to(device)
        x = torch.randn(100, 3, 32, 32, generator=g).to(device)
        y = torch.randint(0, 10, (100,), generator=g).to(device)
        return model, lambda m: F.cross_entropy(m(x), y)
    shape = SHAPES[name]
    model = GPT(d=shape["d"], layers=shape["layers"], heads=shape["heads"]).to(device)
    idx = torch.randint(0, 50257, (shape["batch"], 1025), generator=g).to(device)
    return model, lambda m: F.cross_entropy(m(idx[:, :-1]).flatten(0, 1).float(), idx[:, 1:].flatten())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["resnet18", *SHAPES], default="resnet18")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile(model) (the optimizers stay eager)")
    parser.add_argument("--alone", action="store_true",
                        help="one optimizer in memory at a time (timed one after another, not interleaved); "
                             "implied for decoder1b, whose runs do not fit on one card together")
    parser.add_argument("--optimizer", action="append", default=None)
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--authors-repo", help="a checkout of sandialabs/alice: time the authors' code too")
    parser.add_argument("--log")
    args = parser.parse_args()
    device = "cuda"
    specs = [parse_optimizer(s) for s in (args.optimizer or ["adam,fused=True", "alice"])]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def forward_backward(loss_fn, zero):
        zero()
        with autocast:
            loss = loss_fn()
        loss.backward()
        return loss

    def build(name):
        """One run, warmed up; ``resident``: the bytes it holds between steps (model, data,
        gradients, optimizer state), so that its peak can be told apart from other runs'."""
        before = torch.cuda.memory_allocated()
        torch.manual_seed(0)
        model, loss_of = workload(args.model, device)
        loss_fn = partial(loss_of, torch.compile(model) if args.compile else model)
        if name == "sandialabs/alice":  # their step takes (model_func, loss_func) and runs backward itself
            from pathlib import Path

            from authors_code import load_authors_alice

            opt = load_authors_alice(Path(args.authors_repo))(model.parameters(), lr=1e-3)

            def evaluate(f=loss_fn):
                with autocast:
                    return f()

            run = dict(model=model, opt=opt, step=lambda o=opt, e=evaluate: o.step((e, lambda out: out)),
                       closure=None, period=4, passes=1.5)
            warm = 16
        else:
            spec = next(s for s in specs if s.text == name)
            opt = spec.make(model.parameters(), lr=1e-3)
            closure = lambda f=loss_fn, o=opt: forward_backward(f, o.zero_grad)  # noqa: E731
            step = (lambda o=opt, c=closure: o.step(c)) if spec.needs_closure else (lambda o=opt, c=closure: (c(), o.step()))
            period = getattr(opt, "quick_steps", 0) + 1
            run = dict(model=model, opt=opt, step=step, closure=closure, period=period,
                       passes=(3 + period - 1) / period if spec.needs_closure else 1.0)
            warm = -(-(getattr(opt, "warmup_steps", 0) + 3) // period) * period
        for _ in range(warm):
            run["step"]()
        torch.cuda.synchronize()
        run["resident"] = torch.cuda.memory_allocated() - before
        return run

    def measure(name, run):
        """Syncs per step and the peak of one period as if this run were alone on the card."""
        others = torch.cuda.memory_allocated() - run["resident"]
        torch.cuda.reset_peak_memory_stats()
        with SyncCounter() as counter:
            for _ in range(run["period"]):
                run["step"]()
            torch.cuda.synchronize()
        run["peak"] = (torch.cuda.max_memory_allocated() - others) / 2**30
        run["syncs"] = counter.count / run["period"]

    time_it = lambda fn, n: 1e3 * timed(fn, n, device)  # noqa: E731  (ms per call)
    names = [s.text for s in specs] + (["sandialabs/alice"] if args.authors_repo else [])
    alone = args.alone or args.model == "decoder1b"
    times = {name: [] for name in names}
    fwdbwd, results = [], {}
    for together in ([[n] for n in names] if alone else [names]):
        runs = {name: build(name) for name in together}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(time_it(run["step"], args.periods * run["period"]))
            if specs[0].text in runs:  # the floor's forward+backward, on the first optimizer's run
                first = runs[specs[0].text]
                fwdbwd.append(time_it(first["closure"], 10))
                first["opt"].zero_grad()  # those gradients were for timing only
        for name, run in runs.items():
            measure(name, run)
            results[name] = {key: run[key] for key in ("passes", "period", "peak", "syncs")}
        del runs, run
        torch.cuda.empty_cache()
    rows, base = [], statistics.median(times[specs[0].text])
    fb = statistics.median(fwdbwd)
    print(versions())
    print(f"{args.model} {args.precision}{' compiled' if args.compile else ''}: forward+backward alone {fb:.2f} ms; "
          f"medians of {args.repeats} repeats of {args.periods} periods{', one optimizer at a time' if alone else ''}")
    print(f"{'optimizer':30s} {'ms/step':>8s} {'ratio':>6s} {'floor':>6s} {'syncs/step':>10s} {'peak GiB':>9s}")
    for name in names:
        med, run = statistics.median(times[name]), results[name]
        floor = (base + (run["passes"] - 1) * fb) / base
        print(f"{name:30s} {med:8.2f} {med / base:6.2f} {floor:6.2f} {run['syncs']:10.2f} {run['peak']:9.2f}")
        rows.append(dict(optimizer=name, ms=med, ratio=med / base, floor=floor, syncs_per_step=run["syncs"],
                         peak_gib=run["peak"], spread_ms=[min(times[name]), max(times[name])]))
    write_log(args.log, dict(model=args.model, precision=args.precision, compiled=args.compile, alone=alone,
                             fwdbwd_ms=fb, rows=rows))
    assert math.isfinite(base)


if __name__ == "__main__":
    main()
