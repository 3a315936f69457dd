"""``torch.compile`` kernels: the whole Alice update, and the perturbation, each
fused into one pass over memory per tensor (C++/OpenMP on CPU, Triton on GPU).

Compiled lazily on first use with dynamic shapes, so tensors of any size share
a kernel. Hyperparameters that change during training (sigma, the early-step
betas, the lr-scaled bounds) and the sign key enter as 0-d tensors, so a new lr
never recompiles; the rest (modes, eps, weights) is specialised on.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .._rademacher import as_int32, signs_at

_DYNAMIC = ("sigma", "b1", "b2", "b3", "tau1", "tau2")

# One graph per mode (warm-up, sampling, quick), dtype and rank: more than
# dynamo's default limit of 8 once float32 and float64 groups meet.
# (torch < 2.7 calls the setting cache_size_limit.)
_LIMIT = {
    "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit": 64
}


_AVAILABLE: dict[str, bool] = {}
"""Per device type: whether compiled kernels work there (probed once; set to False
for good when compiling an Alice kernel fails later)."""


def _warn_fallback(device_type: str, err: Exception) -> None:
    warnings.warn(
        f"alice: torch.compile is unavailable on {device_type!r} ({type(err).__name__}: {err}); "
        "the fused update falls back to the multi-tensor (foreach) path.",
        RuntimeWarning,
        stacklevel=5,
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


def _run(compiled, eager, args, kwargs) -> None:
    """``compiled(*args, **kwargs)``, or ``eager`` from now on if compiling it fails
    (a graph torch.compile cannot build here must not stop training)."""
    device_type = args[0].device.type
    if _AVAILABLE.get(device_type, True):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:  # raised before any write
            _AVAILABLE[device_type] = False
            _warn_fallback(device_type, err)
    return eager(*args, **kwargs)


@functools.cache
def _compile(fn):
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _flat(t):
    return t.view(-1) if t is not None and t.is_contiguous() else t


def update_(tensors, hyper: dict, body) -> None:
    """Run ``body`` (``functional._update_``) compiled, one tensor at a time."""
    kwargs = dict(hyper)
    kwargs.update({k: torch.tensor(kwargs[k], dtype=torch.float64) for k in _DYNAMIC})
    update = _compile(body)
    with torch._dynamo.config.patch(**_LIMIT):
        for args in zip(*tensors):
            # Size-1 tensors would get a graph of their own (dynamo never treats
            # size 1 as dynamic), which inductor 2.11 miscompiles for float64 on
            # CUDA; they cost nothing eagerly.
            flat = list(map(_flat, args))
            if args[0].numel() > 1:
                _run(update, body, flat, kwargs)
            else:
                body(*flat, **kwargs)


def _perturb(out, nu, key, scale):
    # out = nu + scale * z, z_i = signs_at(i, key): signs hashed in registers
    index = torch.arange(out.numel(), dtype=torch.int32, device=out.device)
    out.copy_(nu + scale * signs_at(index, key).to(nu.dtype))


def perturb_(params, nus, keys, scales) -> None:
    """``param = nu + scale * z`` for each tensor, z the counter-based signs of ``key``
    (int32 indices: a tensor may hold up to 2**31 elements)."""
    perturb = _compile(_perturb)
    with torch._dynamo.config.patch(**_LIMIT):
        for p, nu, key, scale in zip(params, nus, keys, scales):
            out = p if p.is_contiguous() else torch.empty_like(nu)  # nu is always contiguous
            key = torch.tensor(as_int32(key), dtype=torch.int32)
            _run(perturb, _perturb, (out.view(-1), nu.view(-1), key, torch.tensor(scale, dtype=torch.float64)), {})
            if out is not p:
                p.copy_(out)
