"""Alice under ``torch.distributed``: what the ranks agree on, and sharded parameters.

Alice adds no communication layer of its own. DDP and FSDP2 reduce the
gradients of every closure evaluation as usual (a sampling step evaluates three
times, so it reduces three times); on top of that, the ranks agree on two
things, through the default process group:

* **the seed** of the Rademacher signs, once, at construction
  (:func:`agree_seed`): rank 0's seed, drawn or given, so that every replica
  perturbs alike even when the ranks seeded torch differently;
* **the skip decision** of every step (:func:`agree_flag`): a step is taken only
  if the loss and the gradients are finite on every rank. It is one all-reduce
  of a 0-d flag on the device, with no host sync; without a process group, or
  with one rank, nothing is communicated.

With FSDP2 (``torch.distributed.fsdp.fully_shard``) the parameters are
DTensors sharded along dim 0. Alice keeps the state of each rank's shard only,
in flat buffers over the local tensors, and updates it in place: nothing is
gathered. The sign of an element depends on the seed, the step and the
element's index in the *unsharded* flat layout (:func:`global_offset`), so
any number of ranks follows the trajectory of one process. The optimizer's
state views are DTensors laid out like their parameters (:func:`like_param`),
so ``torch.distributed.checkpoint`` saves them sharded and reshards on load.

Everything DTensor-specific lives here; ``state``, ``evaluation`` and
``optimizer`` only call these functions. DTensor is never imported by this
module: a tensor can only be a DTensor once ``torch.distributed.tensor`` is
loaded, so plain single-process runs pay nothing for it.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = [
    "agree_flag", "agree_seed", "full_numel", "global_offset", "is_dtensor", "like_param",
    "local_tensor", "shard_of", "world_size", "write_mark",
]


def _dist():
    import torch.distributed as dist

    return dist


def world_size() -> int:
    """Ranks in the default process group (1 without one)."""
    if not torch.distributed.is_available():
        return 1
    dist = _dist()
    return dist.get_world_size() if dist.is_initialized() else 1


def agree_seed(seed: int | None) -> int:
    """The seed every rank uses: rank 0's.

    With ``seed=None`` each rank draws one from torch's global RNG (so that every
    rank's RNG streams advance as in a single process) and rank 0's draw wins:
    replicas then perturb alike even when the ranks seeded torch differently.
    An explicit seed that differs from rank 0's raises ``ValueError`` on every
    rank. Without a process group, or with one rank, nothing is communicated.
    Every rank of the default group must construct its optimizer (one collective
    of a few bytes, as ``DDP`` and ``fully_shard`` do when they wrap a model);
    with NCCL, call ``torch.cuda.set_device`` first, as usual.
    """
    drawn = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if seed is None else seed
    size = world_size()
    if size == 1:
        return drawn
    seeds: list = [None] * size
    _dist().all_gather_object(seeds, (drawn, seed is not None))
    agreed = seeds[0][0]
    differ = [rank for rank, (value, given) in enumerate(seeds) if given and value != agreed]
    if differ:
        raise ValueError(
            f"Invalid seed: ranks {differ} were given seeds that differ from rank 0's {agreed} "
            f"(all seeds: {[value for value, _ in seeds]}); pass the same seed on every rank, "
            "or seed=None to use rank 0's"
        )
    return agreed


def agree_flag(ok: Tensor) -> Tensor:
    """``ok`` (a 0-d bool tensor) and-ed over all ranks: one all-reduce (MIN) of one
    byte on ``ok``'s device, enqueued without waiting for it (no host sync). ``ok``
    itself without a process group or with one rank."""
    if world_size() == 1:
        return ok
    dist = _dist()
    flag = ok.to(_collective_device(ok.device), torch.uint8, non_blocking=True)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.to(ok.device, torch.bool, non_blocking=True)


def _collective_device(device: torch.device) -> torch.device:
    """``device``, unless the default group cannot reduce there (CPU state, as with
    FSDP2's CPU offload, under NCCL alone): then the current accelerator."""
    backend = str(_dist().get_backend())
    if device.type != "cpu" or backend == "gloo" or "cpu:" in backend or not torch.cuda.is_available():
        return device
    return torch.device("cuda", torch.cuda.current_device())


# -- DTensor shards ------------------------------------------------------------------


def _dtensor_class():
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (False, at no cost, while DTensor is not loaded)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a plain tensor over its data), else ``t``.

    FSDP2 may replace a parameter's local tensor (``model.to``, a state dict loaded
    with ``assign=True``), so callers ask again each time instead of keeping it."""
    return t._local_tensor if is_dtensor(t) else t


def _check_placements(p: Tensor) -> None:
    from torch.distributed.tensor import Replicate, Shard

    for placement in p.placements:
        if type(placement) is Replicate or (type(placement) is Shard and placement.dim == 0):
            continue
        raise ValueError(
            f"Invalid parameter: a DTensor of shape {tuple(p.shape)} with placements {p.placements}. "
            "Alice supports DTensors sharded along dim 0 (FSDP2's fully_shard, HSDP) or replicated: "
            "their local shards are contiguous runs of the flattened parameter, which keeps the "
            "Rademacher signs independent of the sharding."
        )


def global_offset(p: Tensor) -> int:
    """The index of the local shard's first element within the flattened full
    parameter (0 for a plain tensor). Only dim-0 sharding (and replication) is
    accepted: the local shard is then one contiguous run of the flat parameter."""
    if not is_dtensor(p):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _check_placements(p)
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    row = 1
    for extent in p.shape[1:]:
        row *= extent
    return (offset[0] if offset else 0) * row


def full_numel(p: Tensor) -> int:
    """Elements of the whole parameter (of all shards together)."""
    return p.numel()  # a DTensor reports its global shape


def like_param(local: Tensor, p: Tensor) -> Tensor:
    """``local`` (a tensor of ``p``'s local shape) as a DTensor laid out like ``p``
    when ``p`` is one (sharing ``local``'s memory), else ``local`` itself: the form
    of optimizer state that ``torch.distributed.checkpoint`` saves sharded."""
    if not is_dtensor(p):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())


def shard_of(value: Tensor, p: Tensor) -> Tensor:
    """The part of ``value`` (a state tensor of ``p``'s full shape) that belongs
    to this rank's shard of ``p``: a DTensor's local tensor, or the matching
    slice of a full tensor; ``value`` itself when ``p`` is not a DTensor."""
    if is_dtensor(value):
        if not is_dtensor(p):
            return value.full_tensor()
        if value.device_mesh != p.device_mesh or value.placements != p.placements:
            value = value.redistribute(p.device_mesh, p.placements)
        return value.to_local()
    if not is_dtensor(p):
        return value
    start, shape = global_offset(p), local_tensor(p).shape
    numel = local_tensor(p).numel()
    return value.reshape(-1)[start:start + numel].view(shape)


def write_mark(p: Tensor) -> tuple:
    """What changes when ``p`` is written in place or replaced: its version counters
    and where its (local) data lives. A DTensor's in-place ops bump its own counter,
    writes to its local tensor that one's."""
    if is_dtensor(p):
        local = p._local_tensor
        return p._version, local._version, local.data_ptr()
    return p._version, p.data_ptr()
