"""Functional Alice update: state tensors in, state tensors updated in place.

``alice_`` applies the averages and the move of one step (``alice._math``)
to lists of tensors. It never sees an optimizer, a param group or a closure,
so kernels, distributed wrappers and tests can call it directly.

Three paths share the signature and the formulas:

* ``_single_tensor_alice_``: a Python loop over tensors; the readable ground truth.
* ``_multi_tensor_alice_``: the same formulas on :class:`~alice._foreach.TensorList`
  operands, i.e. ``torch._foreach_*`` kernels over all tensors of one device and dtype.
* ``_fused_alice_``: the same formulas compiled by ``torch.compile`` into one
  fused elementwise kernel per tensor (a single pass over memory).

With neither flag given, the fused path runs for steps over at least
``FUSED_MIN_NUMEL`` elements (where a one-time compile of a few seconds pays
for itself) when ``torch.compile`` works on the device, and the multi-tensor
path otherwise. ``fused=True`` always compiles (falling back to foreach, with a
warning, where no compiler is available); ``fused=False`` or ``foreach`` set
never compiles.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ._foreach import TensorList
from .kernels import compiled
from ._rademacher import rademacher
from ._math import average, glass_sample, hessian_sample, regularized_grad, signed_step

__all__ = ["AliceHyper", "alice_", "perturb_", "use_fused"]


@dataclass(frozen=True)
class AliceHyper:
    """The scalars of one step for one param group.

    ``b1, b2, b3`` are the effective betas of this step (``min(beta, (n-1)/n)``),
    ``sigma`` the perturbation length (the lr), ``tau1, tau2`` the step bounds
    in units of the limit method's scale.
    """

    sigma: float
    b1: float
    b2: float
    b3: float
    eps: float
    w1: float
    w2: float
    phi: float
    omega: float
    tau1: float
    tau2: float
    hess_comp: str
    grad_glass: bool
    limit_method: str
    move: bool


def _update_(
    param, mu, g0, nu, G, V, H, R, gp, gm, *,
    sigma, b1, b2, b3, eps, w1, w2, phi, omega, tau1, tau2, hess_comp, grad_glass, limit_method, move,
):
    """One element-wise Alice step on tensors or TensorLists, in place.

    On entry ``param`` holds ``nu`` (the last evaluation point) and ``mu`` the
    centre; ``gp``/``gm`` are the gradients at ``nu +- sigma z`` on a sampling
    step and ``None`` on a quick step. On exit ``param`` holds the new centre.
    """
    if gp is not None:
        H.copy_(average(H, hessian_sample(gp, gm, sigma, w2, hess_comp), b3))
        R.copy_(average(R, glass_sample(gp, gm, g0, sigma), b3))
    V.copy_(average(V, g0 * g0, b2))
    G.copy_(average(G, regularized_grad(g0, nu, w1, w2), b1))
    if move:
        step = signed_step(
            G, V, H, R, eps=eps, tau1=tau1, tau2=tau2, hess_comp=hess_comp,
            grad_glass=grad_glass, limit_method=limit_method,
        )
        nu.copy_(mu + omega * step)
        param.copy_(mu + phi * step)
    else:  # warm-up: no move, the parameter goes back to the centre
        param.copy_(mu)


def _single_tensor_alice_(tensors, hp):
    kwargs = asdict(hp)
    for args in zip(*tensors):
        _update_(*args, **kwargs)


def _multi_tensor_alice_(tensors, hp):
    kwargs, by_device_dtype = asdict(hp), defaultdict(list)
    for args in zip(*tensors):
        by_device_dtype[args[3].device, args[3].dtype].append(args)  # keyed by nu
    for (device, _), rows in by_device_dtype.items():
        for chunk in _chunks(rows) if device.type == "cpu" else [rows]:  # GPUs: one launch per op
            columns = [None if col[0] is None else TensorList(col) for col in zip(*chunk)]
            _update_(*columns, **kwargs)


def _chunks(rows, budget=1 << 18):
    """Consecutive runs of rows holding about ``budget`` elements. On CPU the ~40
    temporaries of one run then stay in cache and are freed before the next run
    (all at once they spill to memory and are page-faulted anew): 1.2-1.8x faster
    than one run per device and dtype (benchmarks/RESULTS.md)."""
    chunk, size = [], 0
    for row in rows:
        if chunk and size + row[0].numel() > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row[0].numel()
    if chunk:
        yield chunk


def _fused_alice_(tensors, hp):
    compiled.update_(tensors, asdict(hp), _update_)


FUSED_MIN_NUMEL = 1 << 20


def use_fused(fused: bool | None, params: list[Tensor], foreach: bool | None = None) -> bool:
    """The path chooser: whether the fused (compiled) path runs for ``params``."""
    if fused is None:
        if foreach is not None or sum(p.numel() for p in params) < FUSED_MIN_NUMEL:
            return False
    elif not fused:
        return False
    return compiled.available(params[0].device.type, warn=bool(fused))


def alice_(
    params: list[Tensor],
    mus: list[Tensor],
    grads: list[Tensor],
    nus: list[Tensor],
    Gs: list[Tensor],
    Vs: list[Tensor],
    Hs: list[Tensor],
    Rs: list[Tensor],
    grads_plus: list[Tensor] | None,
    grads_minus: list[Tensor] | None,
    hp: AliceHyper,
    *,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> None:
    """Apply one Alice step to lists of tensors, in place.

    ``params`` hold the look-ahead ``nu`` on entry (where ``grads`` were taken)
    and the new centre ``mu`` on exit; ``mus`` hold the centre before the step.
    ``nus, Gs, Vs, Hs, Rs`` are the state (the spec's ``nu, G, V, H, R``),
    in the state dtype; gradients in another dtype (bfloat16 parameters) are
    cast to it. ``grads_plus``/``grads_minus`` are the gradients at
    ``nu +- sigma z`` on a sampling step, ``None`` on a quick step.
    """
    if not params:
        return
    grads, grads_plus, grads_minus = (
        [None] * len(params) if gs is None else [g.to(nu.dtype) for g, nu in zip(gs, nus)]
        for gs in (grads, grads_plus, grads_minus)
    )
    tensors = (params, mus, grads, nus, Gs, Vs, Hs, Rs, grads_plus, grads_minus)
    if use_fused(fused, params, foreach):
        _fused_alice_(tensors, hp)
    elif foreach is False:
        _single_tensor_alice_(tensors, hp)
    else:
        _multi_tensor_alice_(tensors, hp)


def perturb_(params: list[Tensor], nus: list[Tensor], keys: list[int], scales: list[float], *, fused: bool) -> None:
    """Set each parameter to ``nu + scale * z``, ``z`` the Rademacher signs of its ``key``
    (``alice._rademacher``); the fused path hashes the signs inside its kernel."""
    if fused:
        compiled.perturb_(params, nus, keys, scales)
        return
    signs = [rademacher(k, nu.numel(), dtype=nu.dtype, device=nu.device).view(nu.shape) for k, nu in zip(keys, nus)]
    torch._foreach_copy_(params, torch._foreach_add(nus, torch._foreach_mul(signs, scales)))
