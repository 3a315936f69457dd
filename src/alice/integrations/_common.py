"""Framework-free pieces shared by the adapters: finding Alice behind wrappers,
telling which evaluation is running, and clipping every evaluation of one step
by the same factor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..optimizer import Alice

__all__ = ["ConsistentClip", "at_center", "find_alice"]

_WRAPPER_ATTRIBUTES = ("optimizer", "_optimizer")  # Accelerate, Lightning, DeepSpeed wrappers


def find_alice(optimizer: Any, required: bool = True) -> Alice | None:
    """The :class:`~alice.Alice` behind ``optimizer``: itself, or the optimizer that a
    wrapper (Accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``)
    holds, or the first Alice in a list of those. ``None`` (or, with ``required``, a
    ``TypeError`` naming the type found) when there is none."""
    seen = 0
    candidates = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    for candidate in candidates:
        while candidate is not None and seen < 64:
            seen += 1
            if isinstance(candidate, Alice):
                return candidate
            candidate = next((getattr(candidate, a) for a in _WRAPPER_ATTRIBUTES
                              if getattr(candidate, a, None) is not None and getattr(candidate, a) is not candidate),
                             None)
    if required:
        raise TypeError(f"No alice.Alice found in {type(optimizer).__name__} (nor in what it wraps)")
    return None


def at_center(optimizer: Any) -> bool:
    """Whether the evaluation now running is the one at ``nu`` (or none is running):
    False while Alice evaluates at ``nu + sigma z`` or ``nu - sigma z`` (a sampling
    step's perturbed points; in closure-free mode, while the parameters hold one of
    them). Use it to log only the unperturbed loss. True when no Alice is found."""
    alice = find_alice(optimizer, required=False)
    return alice is None or alice.evaluation in (None, "center")


def _total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach(), norm_type).to(device) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), norm_type)


class ConsistentClip:
    """Gradient-norm clipping for Alice: every evaluation of one step is scaled by
    the factor of the step's first evaluation.

    Clipping each of the three gradients of a sampling step by its own norm (what
    ``clip_grad_norm_`` in a closure, Lightning's ``gradient_clip_val`` or HF's
    ``max_grad_norm`` would do) scales ``g+``, ``g-`` and ``g0`` differently, and
    their differences, from which Alice estimates the curvatures ``H`` and ``R``,
    then measure the clipping rather than the loss. One factor per step scales the
    loss of that step instead, which Alice's step (a ratio of averages) tolerates.

    Call it after backward, on each evaluation (inside the closure, or before each
    ``step()`` in closure-free mode). The factor is ``min(1, max_norm / (norm + 1e-6))``
    with the norm of the first evaluation (``opt.evaluation`` ``"plus"`` on a sampling
    step, ``"center"`` on a quick one). Returns this evaluation's norm before clipping;
    :attr:`norm` keeps it, :attr:`center_norm` the last norm measured at ``nu``.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if not max_norm > 0:
            raise ValueError(f"Invalid max_norm: {max_norm!r} (must be > 0)")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self._last: str | None = None
        self._factor: Tensor | None = None
        self.norm: Tensor | None = None
        self.center_norm: Tensor | None = None

    @torch.no_grad()
    def __call__(self, optimizer: Any, parameters: Iterable[Tensor] | None = None) -> Tensor:
        alice = find_alice(optimizer)
        evaluation = alice.evaluation
        if parameters is None:
            parameters = [p for group in alice.param_groups for p in group["params"]]
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = _total_norm(grads, self.norm_type)
        if self._factor is None or evaluation in (None, "plus") or (evaluation == "center" and self._last != "minus"):
            self._factor = (self.max_norm / (norm + 1e-6)).clamp(max=1.0)
        self._last = evaluation
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        for device, group in by_device.items():
            torch._foreach_mul_(group, self._factor.to(device, group[0].dtype))
        self.norm = norm
        if evaluation in (None, "center"):
            self.center_norm = norm
        return norm
