"""The per-step scalars of Alice and its sampling schedule, as pure functions, and
the validation of param groups built on them (not a learning-rate schedule).

Everything here is arithmetic on Python numbers (or 0-d tensors where a count
lives on the device): effective betas, ``beta3``, the step bounds ``tau1, tau2``
with the ``lr_max`` default, the ``phi`` default, the warm-up length and the
sampling schedule. The optimizer, its validation, the kernels and the
diagnostics all call these, so each rule of ``docs/alice-update.md`` is written
once.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

HESS_COMPS = ("zero", "abs", "rms")
LIMIT_METHODS = ("fixed", "sgdm", "adam")


def warmup_steps(beta1: float) -> int:
    """Length of the warm-up, ``floor(1 / (1 - beta1))`` with a tolerance against
    rounding (10 steps at 0.9, 100 at 0.99)."""
    return math.floor(1 / (1 - beta1) + 1e-9)


def beta3(beta2: float, quick_steps: int) -> float:
    """Averaging factor of ``H`` and ``R``: ``1 - (quick_steps + 1) (1 - beta2)``,
    so that they forget at the rate of ``V`` per step though sampled every
    ``quick_steps + 1`` steps."""
    return 1 - (quick_steps + 1) * (1 - beta2)


def effective_beta(beta: float, n):
    """``min(beta, (n - 1) / n)`` for the ``n``-th step (a number or a 0-d tensor),
    so that the first averages are plain averages and need no bias correction."""
    if isinstance(n, torch.Tensor):
        return torch.clamp_max((n - 1) / n, beta)
    return min(beta, (n - 1) / n)


def resolve_phi(phi: float | None, beta1: float) -> float:
    """The centre's fraction of the step; ``None`` means ``1 - beta1``."""
    return 1 - beta1 if phi is None else phi


def resolve_lr_max(lr_max: float | None, lr0: float) -> float:
    """The upper bound in the units of ``lr_min``; ``None`` means twice the group's
    lr at construction (``lr0``)."""
    return 2 * lr0 if lr_max is None else lr_max


def bounds(lr: float, lr0: float, lr_min: float, lr_max: float | None, scale_bounds_with_lr: bool):
    """``(tau1, tau2)``, the step bounds in units of the limit method's scale.

    With ``scale_bounds_with_lr`` they follow the lr by the factor ``lr / lr0``;
    otherwise they are ``lr_min`` and the resolved ``lr_max``.
    """
    upper = resolve_lr_max(lr_max, lr0)
    if scale_bounds_with_lr:
        if lr0 == 0:  # a group at lr 0 since it was built: it does not move (its first lr > 0 becomes lr0)
            return lr_min, upper
        return lr * lr_min / lr0, lr * upper / lr0
    return lr_min, upper


def is_sampling_step(call: int, warmup: int, quick_steps: int) -> bool:
    """Whether the ``call``-th step (1-based, counting calls of ``step()`` that
    advance the schedule) evaluates three gradients: every warm-up step, then
    every ``quick_steps + 1``-th."""
    return call <= warmup or call % (quick_steps + 1) == 0


def sampling_calls(calls: int, warmup: int, quick_steps: int) -> int:
    """How many of calls ``1 .. calls`` were sampling steps under :func:`is_sampling_step`:
    all warm-up calls, then every ``quick_steps + 1``-th (closed form, O(1))."""
    period = quick_steps + 1
    first = min(calls, warmup)
    return first + max(0, calls // period - first // period)


@dataclass(frozen=True)
class StepScalars:
    """The scalars of one step for one param group, as the update formulas take them.

    ``sigma`` is the perturbation length (the lr); ``beta1, beta2, beta3`` the
    averaging factors before the early-step ramp (the kernels apply
    :func:`effective_beta` with the parameters' own count ``n``); ``tau1, tau2``
    the bounds; the rest the group's options.
    """

    sigma: float
    beta1: float
    beta2: float
    beta3: float
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
    decay: float = 0.0
    """``lr * weight_decay``: the share of ``mu`` the decoupled weight decay removes
    before a move (0 for a group without decay or at lr 0)."""


def step_scalars(group: dict, quick_steps: int) -> StepScalars:
    """The :class:`StepScalars` of ``group`` (a param group dict) at its current lr."""
    beta1, beta2 = group["betas"]
    lr = as_float(group["lr"])
    tau1, tau2 = bounds(lr, group["lr0"], group["lr_min"], group["lr_max"], group["scale_bounds_with_lr"])
    return StepScalars(
        sigma=lr, beta1=beta1, beta2=beta2, beta3=beta3(beta2, quick_steps), eps=group["eps"],
        w1=group["w1"], w2=group["w2"], phi=resolve_phi(group["phi"], beta1), omega=group["omega"],
        tau1=tau1, tau2=tau2, hess_comp=group["hess_comp"], grad_glass=group["grad_glass"],
        limit_method=group["limit_method"], decay=lr * group.get("weight_decay", 0.0),
    )


def as_float(value) -> float:
    """A learning rate as a Python float (a tensor lr, as torch's Adam accepts, is read
    once here: keep it on the CPU so that reading it does not wait for a GPU)."""
    return float(value) if isinstance(value, torch.Tensor) else value


# -- validation ---------------------------------------------------------------


def _fail(where: str, name: str, value, rule: str):
    raise ValueError(f"{where}Invalid {name}: {value!r} (must be {rule})")


def _real(where: str, name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            _fail(where, name, value, "a number or a one-element tensor")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(where, name, value, "a finite real number")
    return value


def check_quick_steps(quick_steps) -> int:
    if isinstance(quick_steps, bool) or not isinstance(quick_steps, int) or quick_steps < 0:
        raise ValueError(f"Invalid quick_steps: {quick_steps!r} (must be an integer >= 0)")
    return quick_steps


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r} (must be an integer >= 0 or None)")
    return seed


def check_group(group: dict, quick_steps: int, where: str = "") -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of ``group``
    (``where`` prefixes the message, e.g. with the group's index). The bounds are
    checked as the step would use them (``lr_max`` resolved against ``lr0``)."""
    if "quick_steps" in group:
        raise ValueError(
            f"{where}Invalid quick_steps in a param group: {group['quick_steps']!r} (quick_steps sets "
            "the global sampling schedule; pass it to the Alice constructor only)"
        )
    lr = _real(where, "lr", group["lr"])
    if lr < 0:
        _fail(where, "lr", group["lr"], ">= 0 (lr = 0 evaluates once and leaves the group unchanged)")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        _fail(where, "betas", betas, "a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0 < _real(where, f"betas[{i}]", beta) < 1:
            _fail(where, f"betas[{i}]", beta, "in (0, 1)")
    if beta3(betas[1], quick_steps) <= 0:
        _fail(where, "betas[1]", betas[1],
              f"such that (quick_steps + 1) * (1 - beta2) < 1 with quick_steps={quick_steps}, so beta3 > 0")
    if _real(where, "eps", group["eps"]) <= 0:
        _fail(where, "eps", group["eps"], "> 0")
    for name in ("w1", "w2", "lr_min", "weight_decay"):
        if name not in group:  # weight_decay: groups saved before it existed
            continue
        if _real(where, name, group[name]) < 0:
            _fail(where, name, group[name], ">= 0")
    if group["phi"] is not None and not 0 < _real(where, "phi", group["phi"]) < 2:
        _fail(where, "phi", group["phi"], "in (0, 2) or None")
    if _real(where, "omega", group["omega"]) <= 0:
        _fail(where, "omega", group["omega"], "> 0")
    if "lr0" in group and _real(where, "lr0", group["lr0"]) < 0:
        _fail(where, "lr0", group["lr0"], ">= 0 (the group's initial lr)")
    lr0 = group.get("lr0") or lr
    if group["lr_max"] is not None:
        _real(where, "lr_max", group["lr_max"])
    if resolve_lr_max(group["lr_max"], lr0) < group["lr_min"]:
        _fail(where, "lr_max", group["lr_max"],
              f">= lr_min={group['lr_min']!r} (None means 2 * the group's initial lr = {2 * lr0!r})")
    if group["limit_method"] not in LIMIT_METHODS:
        _fail(where, "limit_method", group["limit_method"], f"one of {LIMIT_METHODS}")
    if group["hess_comp"] not in HESS_COMPS:
        _fail(where, "hess_comp", group["hess_comp"], f"one of {HESS_COMPS}")
    for name in ("scale_bounds_with_lr", "grad_glass"):
        if not isinstance(group[name], bool):
            _fail(where, name, group[name], "a bool")
    if not group["grad_glass"] and group["hess_comp"] == "zero":
        _fail(where, "grad_glass", False, 'True when hess_comp="zero" (the step would have no curvature at all)')


def check_params(param_groups: list[dict]) -> None:
    """Raise ``ValueError`` if a parameter is listed twice or is not real floating point."""
    listed = set()
    for p in (q for g in param_groups for q in g["params"]):
        if id(p) in listed:
            raise ValueError(f"Invalid params: a parameter of shape {tuple(p.shape)} is listed twice")
        listed.add(id(p))
        if not p.is_floating_point():
            raise ValueError(
                f"Invalid parameter of dtype {p.dtype} and shape {tuple(p.shape)} "
                "(Alice updates real floating-point parameters only)"
            )
