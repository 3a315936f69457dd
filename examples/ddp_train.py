"""Train a small GPT with Alice under DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node 2 examples/ddp_train.py --steps 50 --model tiny   # CPU: 2 gloo processes
    torchrun --nproc_per_node 1 examples/ddp_train.py --model small              # one GPU: NCCL

On CUDA the processes use NCCL and bf16 autocast; on CPU gloo and float32. On a
shared multi-GPU machine keep NVLink multicast off:
``NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1``
(set below as defaults). Each rank takes ``--batch`` sequences of the global
batch; DDP all-reduces the gradients of every closure evaluation as usual (a
sampling step evaluates three times, a quick step once). Alice needs nothing
else: the ranks agree on its seed when it is built, and on whether to skip a
non-finite step at every step (see docs/distributed.md).
"""

import os

for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import gpt  # noqa: E402
from alice import Alice  # noqa: E402


def main():
    args = gpt.parse_args(__doc__.splitlines()[0])
    rank, world, device = gpt.setup()
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    config = gpt.SIZES[args.model]
    model = DDP(gpt.GPT(config).to(device), device_ids=[device.index] if device.type == "cuda" else None)
    opt = Alice(model.parameters(), lr=args.lr)  # the seed of its signs: drawn on rank 0, shared
    if args.checkpoint is not None and args.checkpoint.exists():
        load(model, opt, args.checkpoint)
    batches = gpt.Batches(args, config, rank, world, device)
    meter = gpt.Meter(args.batch * world * config.context, device)
    count = sum(p.numel() for p in model.parameters())
    gpt.log(rank, f"DDP on {world} {device.type} process(es), {dist.get_backend()}: {args.model} GPT, "
                  f"{count / 1e6:.2f}M parameters, global batch {args.batch * world} x {config.context} tokens")

    first = opt.calls  # 0, or the steps of a loaded checkpoint
    for i in range(args.steps):
        x, y = batches(first + i)

        def closure():
            opt.zero_grad()
            with gpt.autocast(device):
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            loss.backward()  # DDP all-reduces the gradients here, on every evaluation
            return loss

        loss = opt.step(closure)  # the loss at the look-ahead point nu
        meter.step(i + 1)
        if (i + 1) % args.log_every == 0 or i + 1 == args.steps:
            gpt.log(rank, f"step {first + i + 1:5d}  loss {gpt.mean_over_ranks(loss):.4f}")
    gpt.log(rank, f"{meter.rate():,.0f} tokens/s over the last {meter.timed} steps; "
                  f"skipped steps: {opt.skipped_steps}")
    if args.checkpoint is not None:
        save(model, opt, args.checkpoint)
    dist.destroy_process_group()


def save(model, opt, path):
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, storage_writer=dcp.FileSystemWriter(path, overwrite=True))
    gpt.log(dist.get_rank(), f"saved {path}")


def load(model, opt, path):
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    gpt.log(dist.get_rank(), f"resumed from {path} at step {opt.calls}")


if __name__ == "__main__":
    main()
