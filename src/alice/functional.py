"""Functional Alice: the phases of a step on flat state tensors, updated in place.

Each function applies one formula of ``alice._math`` to 1-D operands (a run of
consecutive parameters in a flat buffer of ``alice.state``) and never sees an
optimizer, a param group or a closure, so kernels, wrappers and tests can call
them directly:

* :func:`point_` writes the point where the next gradient is taken;
* :func:`samples_ok` decides, on the device, whether the step can be taken;
* :func:`alice_` averages the gradients and moves.

Three paths share each signature and formula:

* single-tensor (``foreach=False``): a loop over the parameters' segments; the
  readable ground truth;
* flat (the default without a compiler): each formula once over the whole
  run, a few launches per phase whatever the number of tensors (on CPU in
  cache-sized slices);
* fused (``fused=True``, or chosen): the same formulas compiled by
  ``torch.compile`` into one kernel per phase, signs hashed in registers.

With neither flag set, the fused path runs for runs of at least
``FUSED_MIN_NUMEL`` elements where compiling works (the one-time compile of a
few seconds then pays for itself); a flag set by the user always wins.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _math
from ._rademacher import rademacher
from ._math import Elements, Gradients
from ._scalars import StepScalars
from . import kernels

__all__ = ["CPU_SLICE", "FUSED_MIN_NUMEL", "Elements", "Gradients", "alice_", "point_", "samples_ok", "use_fused"]

FUSED_MIN_NUMEL = 1 << 20
CPU_SLICE = 1 << 18
"""On CPU the flat path runs in slices of this many elements: the formulas'
temporaries then stay in cache (1.2-1.8x faster than whole buffers)."""


def use_fused(fused: bool | None, numel: int, device: torch.device, foreach: bool | None = None) -> bool:
    """The path chooser: whether the compiled path runs for ``numel`` elements on ``device``."""
    if fused is None:
        if foreach is not None or numel < FUSED_MIN_NUMEL:
            return False
    elif not fused:
        return False
    return kernels.available(device.type, warn=bool(fused))


def _slices(numel: int, device: torch.device, segments, foreach: bool | None):
    """``(start, stop)`` pieces a non-fused path processes one at a time."""
    if foreach is False and segments is not None:
        return segments
    if device.type == "cpu":
        return [(a, min(a + CPU_SLICE, numel)) for a in range(0, max(numel, 1), CPU_SLICE)]
    return [(0, numel)]


def _cut(t, a, b):
    return None if t is None else t[a:b]


def alice_(
    state: Elements, grads: Gradients, *, n: Tensor, ok: Tensor, move: bool, scalars: StepScalars,
    out: Tensor | None = None, check: bool = False, segments: list[tuple[int, int]] | None = None,
    foreach: bool | None = None, fused: bool | None = None, rounding: tuple[int, int] | None = None,
) -> Tensor:
    """Average the gradients into ``G, V`` (and ``H, R`` on a sampling step) and move.

    ``state`` holds 1-D tensors of one length (the centre ``mu``, the look-ahead's
    offset ``nu - mu`` and the averages, in the state dtype); ``grads`` the gradient
    at ``nu`` and, on a sampling step, those at ``nu +- sigma z``, of the same length.
    ``n`` (0-d) counts the steps these elements took part in, ``ok`` (0-d bool) says
    whether this one is taken: every write is predicated on it, so a skip needs no
    host sync. ``out`` (optional) receives the new centre in the parameters' dtype.
    ``segments`` are the parameters' ``(start, stop)`` within the run, for the
    single-tensor path. With ``check``, ``ok`` is narrowed first by
    :func:`samples_ok` of these gradients. ``rounding``: ``(base, key)`` where the
    averages are kept in bfloat16 (the index of the first element and the step's
    noise key), else None. Returns the ``ok`` used.
    """
    kwargs = dict(scalars.__dict__, n=n, ok=ok, move=move, check=check, rounding=rounding)
    mu = state.mu
    if use_fused(fused, mu.numel(), mu.device, foreach):
        return kernels.update_(state, grads, out, kwargs)
    pieces = _slices(mu.numel(), mu.device, segments, foreach)
    if check and len(pieces) > 1:  # the decision must cover every piece before any is written
        kwargs.update(check=False, ok=ok & samples_ok(grads, scalars=scalars, foreach=foreach))
    for a, b in pieces:
        if rounding is not None:
            kwargs["rounding"] = (rounding[0] + a, rounding[1])
        used = _math.update_(state.cut(a, b), grads.cut(a, b), _cut(out, a, b), **kwargs)
    return used


def point_(
    out: Tensor, mu: Tensor, offset: Tensor, *, scale: float, key: int, base: int,
    foreach: bool | None = None, fused: bool | None = None,
) -> None:
    """``out = mu + offset + scale * z``: the look-ahead ``nu`` shifted by ``scale``
    times the Rademacher signs ``z`` of step key ``key`` at global indices
    ``base, base + 1, ...`` (``scale = 0``: ``nu`` itself, no signs hashed).
    ``out`` may have a narrower dtype (the parameters'): the point is rounded."""
    if use_fused(fused, mu.numel(), mu.device, foreach):
        kernels.point_(out, mu, offset, scale, key, base)
        return
    for a, b in _slices(mu.numel(), mu.device, None, foreach):
        signs = None if scale == 0 else rademacher(key, b - a, offset=base + a, dtype=mu.dtype, device=mu.device)
        out[a:b].copy_(_math.evaluation_point(mu[a:b], offset[a:b], scale, signs))


def samples_ok(
    grads: Gradients, *, scalars: StepScalars, foreach: bool | None = None, fused: bool | None = None,
) -> Tensor:
    """A 0-d bool tensor on the gradients' device: whether every sample of the step
    is finite (``alice._math.samples_finite``). Nothing is read back to the host."""
    kwargs = dict(sigma=scalars.sigma, w2=scalars.w2, hess_comp=scalars.hess_comp)
    g0 = grads.g0
    if use_fused(fused, g0.numel(), g0.device, foreach):
        return kernels.samples_finite(grads, kwargs)
    oks = [_math.samples_finite(grads.cut(a, b), **kwargs) for a, b in _slices(g0.numel(), g0.device, None, foreach)]
    return oks[0] if len(oks) == 1 else torch.stack(oks).all()
