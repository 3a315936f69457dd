"""Train a small GPT with Alice on FSDP2 (``fully_shard``), launched by torchrun.

    torchrun --nproc_per_node 2 examples/fsdp_train.py --steps 50 --model tiny   # CPU: 2 gloo processes
    torchrun --nproc_per_node 1 examples/fsdp_train.py --model small              # one GPU: NCCL

On CUDA the processes use NCCL and bf16 autocast; on CPU gloo and float32. On a
shared multi-GPU machine keep NVLink multicast off:
``NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1``
(set below as defaults). Every transformer block and the root are sharded;
Alice keeps and updates only each rank's shards (its state is sharded like the
parameters, nothing is gathered), and the Rademacher sign of an element depends
on its index in the unsharded model, so any number of ranks follows the same
trajectory. ``--checkpoint DIR`` saves a sharded torch.distributed.checkpoint
at the end and resumes from it, on any number of ranks (docs/distributed.md).
"""

import os

for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import gpt  # noqa: E402
from alice import Alice  # noqa: E402


def main():
    args = gpt.parse_args(__doc__.splitlines()[0])
    rank, world, device = gpt.setup()
    torch.manual_seed(args.seed)  # the same full weights on every rank, before sharding
    config = gpt.SIZES[args.model]
    model = gpt.GPT(config).to(device)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)  # the embeddings, final norm and head, and the root
    opt = Alice(model.parameters(), lr=args.lr)  # built on the shards (DTensors): state per shard
    if args.checkpoint is not None and args.checkpoint.exists():
        load(model, opt, args.checkpoint)
    batches = gpt.Batches(args, config, rank, world, device)
    meter = gpt.Meter(args.batch * world * config.context, device)
    count = sum(p.numel() for p in model.parameters())  # a DTensor counts its full shape
    local = sum(p.to_local().numel() for p in model.parameters())
    gpt.log(rank, f"FSDP2 on {world} {device.type} process(es), {dist.get_backend()}: {args.model} GPT, "
                  f"{count / 1e6:.2f}M parameters ({local / 1e6:.2f}M on rank 0), "
                  f"global batch {args.batch * world} x {config.context} tokens")

    first = opt.calls  # 0, or the steps of a loaded checkpoint
    for i in range(args.steps):
        x, y = batches(first + i)

        def closure():
            opt.zero_grad()
            with gpt.autocast(device):
                loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
            loss.backward()  # FSDP2 reduce-scatters the gradients here, on every evaluation
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
    """A sharded checkpoint: each rank writes its shards (any rank count can load it)."""
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
