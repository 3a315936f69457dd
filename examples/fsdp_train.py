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
    count = sum(p.numel() for p in model.parameters())  # a DTensor counts its full shape
    local = sum(p.to_local().numel() for p in model.parameters())
    describe = (f"FSDP2 on {world} {device.type} process(es), {dist.get_backend()}: {args.model} GPT, "
                f"{count / 1e6:.2f}M parameters ({local / 1e6:.2f}M on rank 0)")
    gpt.train(model, opt, args, rank, world, device, describe, "FSDP2 reduce-scatters the gradients")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
