"""Compiled kernels of the Alice phases, built lazily by ``torch.compile``.

Nothing here imports ``torch._dynamo`` until a compiled kernel is first needed,
so ``import alice`` stays light. One global switch turns compilation off:
:func:`set_compile_enabled` (or the environment variable ``ALICE_COMPILE=0``);
the flat multi-tensor path then runs everywhere.
"""

from __future__ import annotations

import os

__all__ = ["available", "compile_enabled", "point_", "run", "samples_finite", "set_compile_enabled", "update_"]

_ENABLED = os.environ.get("ALICE_COMPILE", "1").strip().lower() not in ("0", "false", "no", "off")


def compile_enabled() -> bool:
    """Whether Alice may compile kernels (the global switch)."""
    return _ENABLED


def set_compile_enabled(enabled: bool) -> None:
    """Allow (``True``) or forbid (``False``) compiled kernels for every Alice optimizer.
    Forbidden, ``fused=True`` warns once and the flat path runs instead."""
    global _ENABLED
    _ENABLED = bool(enabled)


def available(device_type: str, warn: bool = True) -> bool:
    """Whether compiled kernels can run on ``device_type`` (probed once per type)."""
    if not _ENABLED:
        return False
    from . import compiled

    return compiled.available(device_type, warn)


def run(fn, args, kwargs):
    """``fn(*args, **kwargs)`` compiled (dynamic shapes, one graph), or eagerly from then
    on where compiling fails on that device type; for elementwise functions of flat
    tensors (the diagnostics' statistics use it too)."""
    from . import compiled

    return compiled.run(fn, args, kwargs)


def update_(state, grads, out, kwargs):
    """``alice._math.update_`` compiled into one kernel over flat operands."""
    from . import compiled

    return compiled.update_(state, grads, out, kwargs)


def point_(out, mu, offset, scale, key, base) -> None:
    """``alice._math.evaluation_point`` compiled, signs hashed in registers."""
    from . import compiled

    compiled.point_(out, mu, offset, scale, key, base)


def samples_finite(grads, kwargs):
    """``alice._math.samples_finite`` compiled into one reduction."""
    from . import compiled

    return compiled.samples_finite(grads, kwargs)
