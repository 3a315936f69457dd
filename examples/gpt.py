"""What ``ddp_train.py`` and ``fsdp_train.py`` share: a small GPT, its data, the process
group set-up from torchrun's environment, and the throughput meter.

The model is a plain decoder-only transformer (pre-norm blocks of causal
self-attention and a GELU MLP). The data are the bytes of the text files
bundled with this repository (its docs, README and sources; vocabulary 256),
or random tokens with ``--data random``: each rank reads its own windows, so
the global batch is ``--batch`` times the number of ranks.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "alice").is_dir():  # run from a checkout: its own alice, installed or not
    sys.path.insert(0, str(ROOT / "src"))


@dataclass(frozen=True)
class Config:
    layers: int
    heads: int
    width: int
    context: int
    vocab: int = 256


SIZES = {
    "tiny": Config(layers=2, heads=2, width=64, context=64),  # 0.14M parameters
    "small": Config(layers=6, heads=6, width=384, context=256),  # 10.9M
    "gpt2": Config(layers=12, heads=12, width=768, context=1024, vocab=50304),  # 163M: GPT-2 small's shape, head untied
}


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.heads = c.heads
        self.norm1, self.norm2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv, self.proj = nn.Linear(c.width, 3 * c.width), nn.Linear(c.width, c.width)
        self.up, self.down = nn.Linear(c.width, 4 * c.width), nn.Linear(4 * c.width, c.width)

    def forward(self, x):
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).transpose(1, 3).unbind(2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, w))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class GPT(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed, self.position = nn.Embedding(c.vocab, c.width), nn.Embedding(c.context, c.width)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm, self.head = nn.LayerNorm(c.width), nn.Linear(c.width, c.vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.layers) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens):
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def corpus() -> torch.Tensor:
    """The bytes of the repository's bundled text (docs, README, sources)."""
    files = sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("src/alice/**/*.py")])
    return torch.frombuffer(bytearray(b"\n".join(f.read_bytes() for f in files)), dtype=torch.uint8).long()


class Batches:
    """Windows of ``context + 1`` tokens, drawn per (step, rank) from a seeded generator:
    any rank count reads the same global batch at every step."""

    def __init__(self, args, config: Config, rank: int, world: int, device):
        self.args, self.config, self.rank, self.world, self.device = args, config, rank, world, device
        self.text = corpus() if args.data == "text" else None
        if self.text is not None and len(self.text) <= config.context + 1:
            raise ValueError(f"the bundled text ({len(self.text)} bytes) is too short for context {config.context}")

    def __call__(self, step: int):
        g = torch.Generator().manual_seed(step)
        shape = (self.args.batch * self.world, self.config.context + 1)
        if self.text is None:
            windows = torch.randint(0, self.config.vocab, shape, generator=g)
        else:
            starts = torch.randint(0, len(self.text) - shape[1], (shape[0],), generator=g)
            windows = self.text[starts[:, None] + torch.arange(shape[1])]
        mine = windows.chunk(self.world)[self.rank].to(self.device, non_blocking=True)
        return mine[:, :-1], mine[:, 1:]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny", help="model size (default tiny)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per rank and step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Alice's lr, also the perturbation length")
    parser.add_argument("--data", choices=("text", "random"), default="text",
                        help="the repository's bundled text as bytes (default), or random tokens")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation seed")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a torch.distributed.checkpoint folder: loaded first if present, saved at the end")
    return parser.parse_args()


def setup():
    """The process group from torchrun's environment (a world of one without torchrun):
    NCCL on CUDA, gloo on CPU. Returns ``(rank, world, device)``."""
    if "RANK" not in os.environ:  # plain `python examples/...`: one process
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def autocast(device):
    """bf16 autocast on CUDA (parameters and Alice's state stay float32); off on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class Meter:
    """Tokens per second of the global batch (each token is counted once per step, however
    many evaluations the step makes), timed after ``skip`` warm-up steps."""

    def __init__(self, tokens_per_step: int, device, skip: int = 3):
        self.tokens_per_step, self.device, self.skip = tokens_per_step, device, skip
        self.start = None
        self.timed = 0

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, step: int):
        if step == self.skip:
            self.sync()
            self.start = time.perf_counter()
        elif step > self.skip:
            self.timed += 1

    def rate(self) -> float:
        if self.start is None or self.timed == 0:
            return float("nan")
        self.sync()
        return self.timed * self.tokens_per_step / (time.perf_counter() - self.start)


def mean_over_ranks(loss: torch.Tensor) -> float:
    """The loss averaged over the ranks (a host sync: for logging only)."""
    loss = loss.detach().float().clone()
    dist.all_reduce(loss)
    return loss.item() / dist.get_world_size()


def log(rank: int, message: str):
    if rank == 0:
        print(message, flush=True)


def train(model, opt, args, rank: int, world: int, device, describe: str, reduces: str) -> None:
    """Resume from ``--checkpoint`` if it exists, train ``--steps`` Alice steps on this rank's
    batches (``reduces``: what the wrapper does with the gradients, for the comment in the
    log), print the loss and tokens/s, and save the checkpoint at the end."""
    config = SIZES[args.model]
    if args.checkpoint is not None and args.checkpoint.exists():
        load(model, opt, args.checkpoint)
    batches = Batches(args, config, rank, world, device)
    meter = Meter(args.batch * world * config.context, device)
    log(rank, f"{describe}, global batch {args.batch * world} x {config.context} tokens; "
              f"{reduces} on every closure evaluation")
    first = opt.calls  # 0, or the steps of a loaded checkpoint
    for i in range(args.steps):
        x, y = batches(first + i)

        def closure():
            opt.zero_grad()
            with autocast(device):
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            loss.backward()
            return loss

        loss = opt.step(closure)  # the loss at the look-ahead point nu
        meter.step(i + 1)
        if (i + 1) % args.log_every == 0 or i + 1 == args.steps:
            log(rank, f"step {first + i + 1:5d}  loss {mean_over_ranks(loss):.4f}")
    log(rank, f"{meter.rate():,.0f} tokens/s over the last {meter.timed} steps; skipped steps: {opt.skipped_steps}")
    if args.checkpoint is not None:
        save(model, opt, args.checkpoint)


def save(model, opt, path):
    """A torch.distributed.checkpoint of model and optimizer: each rank writes its part
    (sharded under FSDP2); any number of ranks can load it."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, storage_writer=dcp.FileSystemWriter(path, overwrite=True))
    log(dist.get_rank(), f"saved {path}")


def load(model, opt, path):
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    log(dist.get_rank(), f"resumed from {path} at step {opt.calls}")
