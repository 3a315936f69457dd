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
    count = sum(p.numel() for p in model.parameters())
    describe = f"DDP on {world} {device.type} process(es), {dist.get_backend()}: {args.model} GPT, {count / 1e6:.2f}M parameters"
    gpt.train(model, opt, args, rank, world, device, describe, "DDP all-reduces the gradients")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
