"""``AliceState``: the optimizer state as flat buffers with per-parameter views.

The trainable parameters of each (param group, device, dtype) share one
:class:`Bucket`: one contiguous buffer per field of :class:`alice._math.Elements`
(``offset = nu - mu`` and the averages ``G, V, H, R``; the centre ``mu`` is the
parameter itself, and a buffer of its own, float32, for half-precision parameters
only), in the state dtype (float32 for half-precision parameters, else the
parameters' own): 20 bytes per element in float32 (24 with ``mu``; 12 with the averages
kept in bfloat16, ``averages_dtype``), plus a count per parameter
(``step``: the steps it took part in, on its device, so that a skip decided
on the device needs no host sync). Each parameter's ``opt.state[p]`` holds
views of its slices, as torch optimizers keep per-parameter tensors.

Working buffers, in the parameters' dtype: ``grads`` (each ``p.grad`` is a
tensor over its slice, so backward writes straight into the kernels' input),
``plus``/``minus`` (the gradients at ``nu +- sigma z`` of a sampling step) and
``centre`` (the parameters gathered at the start of a step: the centre ``mu``
itself for float32/float64).

Storing ``nu - mu`` instead of ``nu`` makes the spec's rule for edited
parameters free: a parameter loaded or re-initialised between steps is the
new centre, and the look-ahead keeps its offset from it.

Sharded parameters (FSDP2's DTensors, ``alice.distributed``): a bucket holds
each rank's local shards only, and ``global_starts`` gives the index of each
shard's first element in the unsharded layout (for the signs). Backward gives
such a parameter a DTensor gradient of FSDP2's own, which each evaluation
copies into ``grads``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import warnings

import torch
from torch import Tensor

from . import distributed as _dist
from ._math import AVERAGES, STATE_KEYS, Elements, Gradients, state_dtype

__all__ = ["AliceState", "Bucket", "Skips"]


def _over(flat: Tensor, start: int, shape: torch.Size) -> Tensor:
    """A tensor of ``shape`` over ``flat[start:]`` with its own version counter
    (not a view): backward's in-place accumulation into it is then visible per
    parameter, through ``_version``, while the flat buffer is written as a whole."""
    strides, size = [], 1
    for extent in reversed(shape):
        strides.append(size)
        size *= max(extent, 1)
    return torch.empty(0, dtype=flat.dtype, device=flat.device).set_(
        flat.untyped_storage(), flat.storage_offset() + start, shape, tuple(reversed(strides))
    )


@dataclass(eq=False)
class Bucket:
    """The trainable parameters of one (group, device, dtype), laid out flat."""

    group: int
    params: list[Tensor]
    starts: list[int]  # each parameter's start in the flat buffers; starts[-1] = numel
    base: int  # global index of the first element (for the signs)
    buffers: dict[str, Tensor]
    counts: Tensor  # float64, one per parameter: steps it took part in
    grads: Tensor
    centre: Tensor  # the parameters as gathered at the step's start (mu, in their dtype)
    grad_tensors: list[Tensor] = field(default_factory=list)
    centre_views: list[Tensor] = field(default_factory=list)
    offset_views: list[Tensor] = field(default_factory=list)
    written: list[tuple[int, int]] = field(default_factory=list)  # params' (version, data_ptr) as last written
    plus: Tensor | None = None
    minus: Tensor | None = None
    spare_tensors: dict[str, list[Tensor]] = field(default_factory=dict)  # tensors over plus/minus
    cohort: list[int] = field(default_factory=list)  # parameters with equal counts share one (host)
    sampled: list[bool] = field(default_factory=list)  # took part in a sampling step (host)
    grad_marks: list = field(default_factory=list)  # each p.grad and its version at last look
    zeroed: tuple | None = None  # the gradient buffer, its version and the marks when last zeroed
    shapes: list[torch.Size] = field(default_factory=list)  # each parameter's local shape
    sharded: bool = False  # whether any parameter is a DTensor
    full_numel: int = 0  # elements of the unsharded parameters (the next bucket's base follows them)
    global_starts: list[int] = field(default_factory=list)  # each parameter's first global index
    point_runs: list[tuple[int, int, int]] = field(default_factory=list)  # see _point_runs

    @property
    def numel(self) -> int:
        return self.starts[-1]

    @property
    def half(self) -> bool:
        return "mu" in self.buffers

    @property
    def rounds(self) -> bool:
        """Whether the averages are kept in a narrower dtype than the state (bfloat16)."""
        return self.buffers["G"].dtype != self.buffers["offset"].dtype

    @property
    def device(self) -> torch.device:
        return self.grads.device

    @property
    def mu(self) -> Tensor:
        """The centre in the state dtype: the float32 state of half-precision
        parameters, else the gathered parameters themselves."""
        return self.buffers.get("mu", self.centre)

    def elements(self, a: int, b: int) -> Elements:
        """The state of elements ``a .. b - 1``, by name, as the update takes it."""
        return Elements(self.mu[a:b], *(self.buffers[key][a:b] for key in STATE_KEYS))

    def gradients(self, a: int, b: int, sampling: bool) -> Gradients:
        """The gradients of elements ``a .. b - 1`` (with those at ``nu +- sigma z`` if ``sampling``)."""
        if sampling:
            return Gradients(self.grads[a:b], self.plus[a:b], self.minus[a:b])
        return Gradients(self.grads[a:b])

    def tensors_over(self, flat: Tensor) -> list[Tensor]:
        """One tensor per parameter over its slice of ``flat``, each with its own version
        counter (what ``p.grad`` is set to)."""
        return [_over(flat, a, shape) for shape, a in zip(self.shapes, self.starts)]

    def views(self, flat: Tensor) -> list[Tensor]:
        return [flat[a:b].view(shape) for shape, a, b in zip(self.shapes, self.starts, self.starts[1:])]

    def targets(self) -> list[Tensor]:
        """The tensors Alice reads and writes: the parameters, or their local shards."""
        return [_dist.local_tensor(p) for p in self.params] if self.sharded else self.params

    def segments(self, first: int, last: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of parameters ``first .. last - 1`` relative to the first's start."""
        origin = self.starts[first]
        return [(self.starts[k] - origin, self.starts[k + 1] - origin) for k in range(first, last)]

    def ensure_sampling_buffers(self) -> None:
        if self.plus is None:
            self.plus, self.minus = torch.empty_like(self.grads), torch.empty_like(self.grads)
            self.spare_tensors = {"plus": self.tensors_over(self.plus), "minus": self.tensors_over(self.minus)}

    def keep_grads(self, key: str) -> None:
        """Keep the gradients in ``grads`` as ``plus`` or ``minus`` (``key``) without a copy:
        the two buffers trade places, and the next evaluation's backward writes into the
        other one (``p.grad`` follows at :meth:`point_grads_at_buffers`)."""
        self.ensure_sampling_buffers()
        kept, self.grad_tensors, self.spare_tensors[key] = self.grads, self.spare_tensors[key], self.grad_tensors
        self.grads = getattr(self, key)
        setattr(self, key, kept)

    def zero_grads(self) -> None:
        """Zero the gradient buffer and point every ``p.grad`` at it, skipping the zeroing
        when nothing wrote there since the last (a closure's ``zero_grad()`` right after
        Alice readied the buffers: 4 bytes per element less per evaluation). Backward
        writes through the per-parameter tensors, other writes through the flat buffer:
        each has its own version counter, and both must be unchanged."""
        if not self._still_zero():
            self.grads.zero_()
        self.point_grads_at_buffers()  # marks each p.grad and its version
        self.zeroed = None if self.sharded else (self.grads, self.grads._version, self.grad_marks)

    def _still_zero(self) -> bool:
        """Whether the buffer is as :meth:`zero_grads` left it: the same flat buffer at the
        same version, no marks taken since, every ``p.grad`` still its tensor at its mark."""
        if self.zeroed is None:
            return False
        buffer, version, marks = self.zeroed
        return (buffer is self.grads and version == self.grads._version and marks is self.grad_marks
                and all(p.grad is g and g._version == v for p, (g, v) in zip(self.params, marks)))

    def point_grads_at_buffers(self, force: bool = True, clear: bool = True) -> None:
        """Make each ``p.grad`` the bucket's tensor over its slice (with ``force=False``
        only where ``p.grad`` is None: a gradient already there is the user's). A
        sharded parameter's gradient is set to None instead (with ``clear``), so that
        FSDP2 does not accumulate onto it; either way what is there now is seen."""
        if self.sharded:
            for p, g in zip(self.params, self.grad_tensors):
                if _dist.is_dtensor(p):  # a DTensor's gradient is FSDP's: copied in
                    if force and clear:
                        p.grad = None
                elif p.grad is not g and (force or p.grad is None):
                    p.grad = g
            self.grad_marks = [None if p.grad is None else (p.grad, _dist.local_tensor(p.grad)._version)
                               for p in self.params]
            return
        # (the hot path, once per evaluation: per-tensor Python kept to attribute reads)
        for p, g in zip(self.params, self.grad_tensors):
            if p.grad is not g and (force or p.grad is None):
                p.grad = g
        self.grad_marks = [(g, g._version) for g in self.grad_tensors] if force else [
            None if p.grad is None else (p.grad, p.grad._version) for p in self.params]

    def note_written(self) -> None:
        """Remember the parameters as Alice left them (to see edits at the next step)."""
        if self.sharded:
            self.written = [_dist.write_mark(p) for p in self.params]
        else:
            self.written = [(p._version, p.data_ptr()) for p in self.params]

    def edited(self) -> list[int]:
        """Indices of the parameters changed since :meth:`note_written` (all at first)."""
        if not self.written:
            return list(range(len(self.params)))
        if self.sharded:
            return [k for k, (p, mark) in enumerate(zip(self.params, self.written)) if _dist.write_mark(p) != mark]
        return [k for k, (p, (version, ptr)) in enumerate(zip(self.params, self.written))
                if p._version != version or p.data_ptr() != ptr]

    def foreign_gradients(self) -> list[Tensor]:
        """Parameters whose gradient was written since Alice last looked: backward ran
        outside a step (or ``p.grad`` was replaced)."""
        return [p for p, mark in zip(self.params, self.grad_marks) if self.new_grad(p.grad, mark)]

    def new_grad(self, grad: Tensor | None, mark: tuple | None) -> bool:
        """Whether ``grad`` (a ``p.grad``) was set or written since its ``mark`` was taken."""
        if grad is None:
            return False
        if mark is None or grad is not mark[0]:
            return True
        return (_dist.local_tensor(grad) if self.sharded else grad)._version != mark[1]


def _point_runs(starts: list[int], global_starts: list[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, global index of start)`` of the maximal runs of the flat buffers
    whose global indices are consecutive: the whole bucket unless it holds shards."""
    runs: list[tuple[int, int, int]] = []
    for a, b, g in zip(starts, starts[1:], global_starts):
        if b == a:
            continue
        if runs and runs[-1][1] == a and runs[-1][2] + a - runs[-1][0] == g:
            runs[-1] = (runs[-1][0], b, runs[-1][2])
        else:
            runs.append((a, b, g))
    return runs


def _new_bucket(group: int, params: list[Tensor], base: int, averages_dtype: torch.dtype | None) -> Bucket:
    device, dtype = params[0].device, params[0].dtype
    local = [_dist.local_tensor(p) for p in params]
    starts, global_starts, full = [0], [], base
    for p, t in zip(params, local):
        starts.append(starts[-1] + t.numel())
        global_starts.append(full + _dist.global_offset(p))
        full += _dist.full_numel(p)
    numel, sdtype = starts[-1], state_dtype(dtype)
    narrow = averages_dtype if averages_dtype is not None and sdtype == torch.float32 else sdtype
    buffers = {key: torch.zeros(numel, dtype=narrow if key in AVERAGES else sdtype, device=device)
               for key in STATE_KEYS}
    centre = torch.empty(numel, dtype=dtype, device=device)
    bucket = Bucket(
        group=group, params=params, starts=starts, base=base, buffers=buffers,
        counts=torch.zeros(len(params), dtype=torch.float64, device=device),
        grads=torch.zeros(numel, dtype=dtype, device=device), centre=centre,
        cohort=[0] * len(params), sampled=[False] * len(params), shapes=[t.shape for t in local],
        sharded=any(t is not p for p, t in zip(params, local)), full_numel=full - base, global_starts=global_starts,
        point_runs=_point_runs(starts, global_starts),
    )
    bucket.grad_tensors = bucket.tensors_over(bucket.grads)
    bucket.centre_views, bucket.offset_views = bucket.views(centre), bucket.views(buffers["offset"])
    if sdtype != dtype:
        torch._foreach_copy_(bucket.views(buffers.setdefault("mu", torch.empty(numel, dtype=sdtype, device=device))),
                             [t.detach() for t in local])
    return bucket


class AliceState:
    """All buckets of one optimizer. They are rebuilt when the set of trainable
    parameters changes (a group added, a parameter frozen or unfrozen); each
    parameter keeps what it had, and a frozen parameter's state waits in
    ``frozen`` until it trains again."""

    def __init__(self, averages_dtype: torch.dtype | None = None) -> None:
        self.averages_dtype = averages_dtype  # bfloat16: G, V, H, R of float32 state kept narrower
        self.buckets: list[Bucket] = []
        self.frozen: dict[int, dict] = {}  # id(param) -> its record while frozen
        self._layout: tuple = ()
        self._next_cohort = 1

    @staticmethod
    def layout(param_groups: list[dict]) -> tuple:
        """What the buckets depend on: each group's trainable parameters, their devices and
        dtypes (a model moved to another device after the optimizer was built moves its
        state along)."""
        return tuple(tuple((id(p), p.device, p.dtype) for p in g["params"] if p.requires_grad)
                     for g in param_groups)

    def stale(self, param_groups: list[dict]) -> bool:
        """Whether the buckets no longer match the trainable parameters (see :meth:`layout`)."""
        return self.layout(param_groups) != self._layout

    def sync(self, param_groups: list[dict]) -> bool:
        """Rebuild the buckets if the trainable parameters changed; returns whether it did."""
        layout = self.layout(param_groups)
        if layout == self._layout:
            return False
        records = {id(p): self.record(b, k) for b in self.buckets for k, p in enumerate(b.params)}
        records.update(self.frozen)
        owned_grads = {id(p): g for b in self.buckets for p, g in zip(b.params, b.grad_tensors) if p.grad is g}
        buckets, base = [], 0
        fresh = self.new_cohort()  # parameters that join now share a cohort of their own
        for g, group in enumerate(param_groups):
            by_kind: dict[tuple, list[Tensor]] = {}
            for p in group["params"]:
                if p.requires_grad:
                    by_kind.setdefault((p.device, p.dtype), []).append(p)
            for ps in by_kind.values():
                bucket = _new_bucket(g, ps, base, self.averages_dtype)
                base += bucket.full_numel
                for k, p in enumerate(ps):
                    if id(p) in owned_grads:  # a gradient in the old buffers moves along
                        bucket.grad_tensors[k].copy_(owned_grads[id(p)])
                        p.grad = bucket.grad_tensors[k]
                    record = records.pop(id(p), None)
                    if record is None:
                        bucket.cohort[k] = fresh
                    else:
                        self.restore(bucket, k, record)
                buckets.append(bucket)
        known = {id(p) for g in param_groups for p in g["params"]}
        self.frozen = {
            pid: {key: value.clone() if isinstance(value, Tensor) else value for key, value in record.items()}
            for pid, record in records.items() if pid in known
        }
        self.buckets, self._layout = buckets, layout
        for bucket in buckets:
            bucket.point_grads_at_buffers(force=False)
        return True

    @staticmethod
    def record(bucket: Bucket, k: int) -> dict:
        """Parameter ``k``'s state as flat views, its count, cohort and sampling flag."""
        a, b = bucket.starts[k], bucket.starts[k + 1]
        record = {key: flat[a:b] for key, flat in bucket.buffers.items()}
        record.update(step=bucket.counts[k], cohort=bucket.cohort[k], sampled=bucket.sampled[k])
        return record

    @staticmethod
    def restore(bucket: Bucket, k: int, record: dict) -> None:
        """Copy a :meth:`record` (or a loaded state) into parameter ``k`` of ``bucket``."""
        a, b = bucket.starts[k], bucket.starts[k + 1]
        for key, flat in bucket.buffers.items():
            if key in record:
                flat[a:b].copy_(record[key].reshape(-1))
        bucket.counts[k].copy_(record["step"])
        bucket.cohort[k], bucket.sampled[k] = record["cohort"], record["sampled"]

    @staticmethod
    def reset(bucket: Bucket, k: int, cohort: int) -> None:
        """Parameter ``k`` of ``bucket`` as a fresh optimizer holds it: zero state, no
        steps, ``nu = mu`` (the float32 centre of a half-precision parameter re-read)."""
        a, b = bucket.starts[k], bucket.starts[k + 1]
        for key, flat in bucket.buffers.items():
            if key == "mu":
                flat[a:b].copy_(_dist.local_tensor(bucket.params[k]).detach().reshape(-1))
            else:
                flat[a:b].zero_()
        bucket.counts[k].zero_()
        bucket.cohort[k], bucket.sampled[k] = cohort, False

    def new_cohort(self) -> int:
        """A cohort number not used yet (parameters of one cohort have equal counts, so one
        kernel call serves a run of them)."""
        self._next_cohort += 1
        return self._next_cohort - 1

    def per_param(self) -> Iterable[tuple[Tensor, dict[str, Tensor]]]:
        """``(param, {"step": ..., "offset": ..., "G": ..., ...})`` with views of the buffers."""
        for bucket in self.buckets:
            views = {key: bucket.views(flat) for key, flat in bucket.buffers.items()}
            for k, p in enumerate(bucket.params):
                entry = {"step": bucket.counts[k]}
                entry.update((key, _dist.like_param(views[key][k], p)) for key in views)
                yield p, entry

    def publish(self, state: dict, param_groups: list[dict]) -> None:
        """Point an optimizer's ``state`` at the per-parameter views (and the frozen
        parameters' records)."""
        state.clear()
        for p, entry in self.per_param():
            state[p] = entry
        params = {id(p): p for g in param_groups for p in g["params"]}
        for pid, record in self.frozen.items():
            state[params[pid]] = {k: v for k, v in record.items() if k not in ("cohort", "sampled")}

    @torch.no_grad()
    def zero_grad(self, param_groups: list[dict], set_to_none: bool) -> None:
        """Zero the gradients: trainable parameters' in the flat buffers, in place (``p.grad``
        stays a tensor over the buffer), the others as torch does."""
        owned = set()
        for b in self.buckets:
            b.zero_grads()  # and what was written there is now accounted for
            owned.update(id(p) for p in b.params)
        for group in param_groups:
            for p in group["params"]:
                if id(p) not in owned and p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().requires_grad_(False).zero_()

    def foreign_gradients(self) -> bool:
        """Whether backward wrote a trainable parameter's gradient since Alice last looked."""
        return any(b.foreign_gradients() for b in self.buckets)


class Skips:
    """The count of skipped steps: on the device (a step's decision is added without a
    host sync), with a pinned host copy on CUDA refreshed without waiting, and a
    warning once skips are known on the host."""

    def __init__(self) -> None:
        self.count: Tensor | None = None  # on the first bucket's device
        self.seen: Tensor | None = None  # the host copy
        self.warned = 0

    def follow(self, device: torch.device) -> None:
        """Keep the count on ``device`` (where the buckets are, after a build or a move)."""
        if self.count is None or self.count.device != device:
            skipped = 0 if self.count is None else int(self.count)
            self.count = torch.full((), skipped, dtype=torch.int64, device=device)
            self.seen = (torch.full((), skipped, dtype=torch.int64, pin_memory=True)
                         if device.type == "cuda" else None)

    def add(self, ok: Tensor) -> None:
        """Count a step whose decision (taken or not) is ``ok``."""
        self.count.add_(~ok.to(self.count.device, non_blocking=True))
        if self.seen is not None:
            self.seen.copy_(self.count, non_blocking=True)

    def set(self, skipped: int) -> None:
        for counter in (self.count, self.seen):
            if counter is not None:
                counter.fill_(skipped)
        self.warned = skipped

    def read(self) -> int:
        """The count (waits for the device)."""
        skipped = 0 if self.count is None else int(self.count)
        self.warn(skipped)
        return skipped

    def warn(self, skipped: int | None = None) -> None:
        """Warn once skipped steps are known on the host (without ``skipped``, from the host
        copy: never waits)."""
        if skipped is None:
            if self.count is None:
                return
            skipped = int(self.seen if self.seen is not None else self.count)
        if skipped > self.warned:
            if self.warned == 0:
                warnings.warn(
                    f"Alice skipped {skipped} step(s): a loss or gradient was not finite, or the "
                    "averages would overflow. Parameters and optimizer state were left unchanged; "
                    "skipped steps are counted in optimizer.skipped_steps. This warning is shown once.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.warned = skipped
