"""``torch.compile`` of the formulas in ``alice._math`` over flat 1-D buffers:
one kernel per phase whatever the number of parameters (C++/OpenMP on CPU,
Triton on GPU).

Compiled on first use with dynamic shapes, so buffers of any length share a
kernel. Values that change during training (sigma and the lr-scaled bounds,
the sign key and index base) enter as 0-d tensors, so a scheduler never
causes a recompile; the modes and the constant hyperparameters are
specialised on. A kernel that fails to compile falls back, with one warning,
to the eager flat path for good on that device type.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .. import _math
from .._rademacher import as_int32, signs_at

_DYNAMIC = ("sigma", "tau1", "tau2")

_AVAILABLE: dict[str, bool] = {}
"""Per device type: whether compiled kernels work there (probed once; set to False
for good when compiling an Alice kernel fails later)."""


@functools.cache
def _raise_recompile_limit() -> None:
    # One graph per mode (warm-up/move, sampling/quick), dtype and option set: more
    # than dynamo's default limit of 8 once float32 and float64 groups meet. Raised
    # once (a global setting; patching it per call would cost ~20 us each time).
    # (torch < 2.7 calls it cache_size_limit.)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))


def _warn_fallback(device_type: str, err: Exception) -> None:
    warnings.warn(
        f"alice: torch.compile is unavailable on {device_type!r} ({type(err).__name__}: {err}); "
        "the update falls back to the flat multi-tensor path.",
        RuntimeWarning,
        stacklevel=6,
    )


def available(device_type: str, warn: bool = True) -> bool:
    """Whether ``torch.compile`` can build kernels on this device type."""
    if device_type not in _AVAILABLE:
        try:
            x = torch.zeros(8, device=device_type)
            torch.compile(lambda t: t.add_(1), dynamic=True, fullgraph=True)(x)
            _AVAILABLE[device_type] = bool(x[0] == 1)
        except Exception as err:  # no C++ compiler, no Triton, unsupported backend
            _AVAILABLE[device_type] = False
            if warn:
                _warn_fallback(device_type, err)
    return _AVAILABLE[device_type]


@functools.cache
def _compile(fn):
    _raise_recompile_limit()
    return torch.compile(fn, dynamic=True, fullgraph=True)


def run(fn, args, kwargs):
    """``fn`` compiled, or eagerly from now on if compiling it fails (a graph that
    torch.compile cannot build here must not stop training)."""
    device_type = next(a for a in args if isinstance(a, torch.Tensor)).device.type
    if _AVAILABLE.get(device_type, True):
        try:
            return _compile(fn)(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:  # raised before any write
            _AVAILABLE[device_type] = False
            _warn_fallback(device_type, err)
    return fn(*args, **kwargs)


def _scalar(value, dtype=torch.float64):
    return torch.tensor(value, dtype=dtype)


def _update(*tensors, **kwargs):
    # the typed operands rebuilt inside the graph (the compiled function takes plain tensors):
    # the fields of Elements, then those of Gradients, then out
    n = len(_math.Elements._fields)
    state, grads = _math.Elements(*tensors[:n]), _math.Gradients(*tensors[n:-1])
    return _math.update_(state, grads, tensors[-1], **kwargs)


def update_(state, grads, out, kwargs):
    kwargs = dict(kwargs)
    kwargs.update({k: _scalar(kwargs[k]) for k in _DYNAMIC})
    if kwargs["decay"] != 0:  # a graph with decay and one without: no decay costs nothing
        kwargs["decay"] = _scalar(kwargs["decay"])
    if kwargs["rounding"] is not None:  # (base, key): they change every step, so tensors
        kwargs["rounding"] = tuple(_scalar(v, torch.int64) for v in kwargs["rounding"])
    return run(_update, (*state, *grads, out), kwargs)


def _point(out, mu, offset, scale, key, base):
    # out = mu + offset + scale * z, z_i = signs_at(base + i, key) hashed in registers
    index = torch.arange(mu.numel(), dtype=base.dtype, device=mu.device) + base
    signs = signs_at(index, key).to(mu.dtype)
    out.copy_(_math.evaluation_point(mu, offset, scale, signs))


def _nu(out, mu, offset):
    out.copy_(_math.evaluation_point(mu, offset, 0.0, None))


def point_(out, mu, offset, scale, key, base) -> None:
    if scale == 0:
        run(_nu, (out, mu, offset), {})
        return
    # int32 indices hash fastest; past 2**31 elements the same bits come from int64
    wide = base + mu.numel() >= 1 << 31
    index_dtype = torch.int64 if wide else torch.int32
    key = _scalar(key if wide else as_int32(key), index_dtype)
    run(_point, (out, mu, offset, _scalar(scale), key, _scalar(base, index_dtype)), {})


def _samples_finite(*grads, **kwargs):
    return _math.samples_finite(_math.Gradients(*grads), **kwargs)


def samples_finite(grads, kwargs):
    kwargs = dict(kwargs, sigma=_scalar(kwargs["sigma"]))
    return run(_samples_finite, tuple(grads), kwargs)
