"""The evaluation points of a step: where each gradient is taken and how it reaches
the buffers.

One step takes gradients at ``nu + sigma z`` and ``nu - sigma z`` (sampling steps)
and at ``nu``. :class:`Points` moves the parameters to each point with a few multi-tensor copies per flat buffer, lets backward write
straight into the optimizer's gradient buffers (each ``p.grad`` is a tensor
over its slice), tells which parameters received a gradient, and puts the
parameters back at the centre when the step is given up. :class:`Replay`
makes the three evaluations see the same randomness (dropout) and, with a
model, leaves its buffers (BatchNorm statistics) as one ordinary evaluation
would. The decision to take the step is a 0-d tensor on the device: nothing
here waits for the GPU.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _math
from . import distributed as _dist
from .errors import CLOSURE_HELP, ClosureError
from .functional import point_
from .state import AliceState, Bucket

__all__ = ["Points", "Replay", "check_loss", "losses_finite", "run_closure", "warn_vanishing_perturbations"]


def _accelerator_modules():
    """Device modules (``torch.cuda``, ...) whose RNG has been initialised."""
    cuda = torch.cuda
    return [cuda] if cuda.is_available() and cuda.is_initialized() else []


class Replay:
    """The global RNG states and (with a model) its buffers at the start of a step."""

    def __init__(self, model: torch.nn.Module | None = None):
        self.cpu_state = torch.get_rng_state()
        self.device_states = [
            (module, [module.get_rng_state(i) for i in range(module.device_count())])
            for module in _accelerator_modules()
        ]
        self.buffers = [] if model is None else [(b, b.clone()) for b in model.buffers()]

    def rewind(self, rng: bool = True) -> None:
        """Put the RNG streams (``rng``) and the buffers back where the step found them."""
        if rng:
            torch.set_rng_state(self.cpu_state)
            for module, states in self.device_states:
                for i, state in enumerate(states):
                    module.set_rng_state(state, i)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)

    def keep_if(self, ok: Tensor) -> None:
        """Keep the buffers' new values where ``ok`` (a 0-d bool tensor), else rewind them."""
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(torch.where(ok.to(buffer.device), buffer, saved))


def check_loss(loss: Any) -> Any:
    """``loss`` if it is a scalar (a one-element tensor or a real number), else a ClosureError."""
    if isinstance(loss, Tensor):
        if loss.numel() == 1:
            return loss
    elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        return loss
    what = "None" if loss is None else (
        f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else f"a {type(loss).__name__}"
    )
    raise ClosureError(f"The closure returned {what}; it must return the scalar loss.\n" + CLOSURE_HELP)


def run_closure(closure: Callable[[], Any]) -> Any:
    """The closure's loss (checked to be a scalar), run with gradients enabled."""
    with torch.enable_grad():
        return check_loss(closure())


def losses_finite(losses: list[Any], device: torch.device) -> Tensor:
    """Whether every loss is finite, as a 0-d bool tensor on ``device`` (no host sync)."""
    tensors = [loss.detach().reshape(()).to(device, torch.float32, non_blocking=True)
               for loss in losses if isinstance(loss, Tensor)]
    numbers_ok = all(math.isfinite(float(loss)) for loss in losses if not isinstance(loss, Tensor))
    ok = torch.isfinite(torch.stack(tensors)).all() if tensors else torch.ones((), dtype=torch.bool, device=device)
    return ok if numbers_ok else ok & False


def _foreach_copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


class Points:
    """The evaluation points of one step over the optimizer's buckets.

    ``scales[i]`` is the perturbation length of bucket ``i`` (its group's lr; 0
    for a group whose lr is 0, which is evaluated at ``nu`` only).
    """

    def __init__(self, state: AliceState, scales: list[float], key: int, paths: list[dict]):
        self.buckets = state.buckets
        self.scales, self.key, self.paths = scales, key, paths
        self.at_centre: list[bool] = []  # whether bucket i's parameters hold mu
        self.touched: list[list[bool]] = [[True] * len(b.params) for b in self.buckets]  # in every evaluation
        self.last: list[list[bool]] = [[] for _ in self.buckets]  # in the last one

    def read_centre(self) -> None:
        """Read into ``centre`` the parameters edited since Alice last wrote them (all, at
        first): ``centre`` is ``mu``. For half-precision parameters the float32
        centre follows an edit of the parameter."""
        self.at_centre = []
        for b in self.buckets:
            edited = b.edited()
            targets = b.targets()
            _foreach_copy_([b.centre_views[k] for k in edited], [targets[k] for k in edited])
            if b.half and edited:
                b.buffers["mu"].copy_(_math.recentre(b.buffers["mu"], b.centre))
            self.at_centre.append(True)

    def to_centre(self) -> None:
        """Parameters back to ``centre`` (``mu``, or the new ``mu`` after the update)."""
        for i, b in enumerate(self.buckets):
            _foreach_copy_(b.targets(), b.centre_views)
            b.note_written()
            self.at_centre[i] = True

    def abandon(self) -> None:
        """Give the step up: parameters back at the centre, gradient buffers zeroed and
        accounted for, so that the next step runs as if this one had not begun."""
        self.to_centre()
        self.ready_grads()

    def move(self, direction: float) -> None:
        """Parameters to ``nu + direction * sigma z`` (``direction`` +1, -1 or 0)."""
        for i, (b, scale, path) in enumerate(zip(self.buckets, self.scales, self.paths)):
            if direction == 0 and self.at_centre[i] and not b.half:
                torch._foreach_add_(b.targets(), b.offset_views)  # nu = mu + offset, where the parameters hold mu
            else:
                mu, offset, scale = b.mu, b.buffers["offset"], direction * scale
                if b.sharded:  # shards: each run of consecutive global indices with its own base
                    for a, z, base in b.point_runs:
                        point_(b.grads[a:z], mu[a:z], offset[a:z], scale=scale, key=self.key, base=base, **path)
                else:
                    point_(b.grads, mu, offset, scale=scale, key=self.key, base=b.base, **path)
                b.zeroed = None  # the buffer held the point (not left to the version counters)
                _foreach_copy_(b.targets(), b.grad_tensors)
            b.note_written()  # a point Alice wrote is no edit: only the user's writes become the centre
            self.at_centre[i] = False

    def ready_grads(self) -> None:
        """Zeroed gradient buffers, with every ``p.grad`` over them: backward accumulates there."""
        for b in self.buckets:
            b.zero_grads()

    def take_grads(self) -> None:
        """Record which parameters received a gradient since :meth:`ready_grads` (and
        bring into the buffers those that backward put elsewhere)."""
        for i, b in enumerate(self.buckets):
            self.last[i] = self._take(b)
            self.touched[i] = [t and u for t, u in zip(self.touched[i], self.last[i])]

    @staticmethod
    def _take(b: Bucket) -> list[bool]:
        """Which parameters received a gradient in this evaluation; copies into the
        buffer the gradients that backward put elsewhere (a closure that set
        ``p.grad = None``, as ``model.zero_grad()`` does, gets a fresh tensor; so does
        every sharded parameter: FSDP2 sets a DTensor, whose local shard is copied)."""
        dst, src, touched = [], [], []
        for p, g, mark in zip(b.params, b.grad_tensors, b.grad_marks):
            grad = p.grad
            if grad is g and not b.sharded:  # the usual case, inline: written since the mark?
                touched.append(mark is None or mark[0] is not g or g._version != mark[1])
                continue
            touched.append(b.new_grad(grad, mark))
            if grad is not None and grad is not g:
                dst.append(g)
                grad = _dist.local_tensor(grad) if b.sharded else grad
                src.append(grad.to_dense() if grad.is_sparse else grad)  # the update is dense anyway
        _foreach_copy_(dst, src)
        b.point_grads_at_buffers(clear=False)  # a sharded parameter keeps FSDP2's gradient
        return touched

    def keep_grads(self, sign: float) -> None:
        """Keep the gradients just taken at ``nu + sign * sigma z``."""
        for b in self.buckets:
            b.keep_grads("plus" if sign > 0 else "minus")

    def release_untouched(self) -> None:
        """``p.grad = None`` for parameters that received no gradient at ``nu``, as after
        an ordinary backward."""
        for b, touched in zip(self.buckets, self.last):
            for p, t in zip(b.params, touched):
                if not t:
                    p.grad = None


def warn_vanishing_perturbations(state: AliceState, sigmas: list[float]) -> bool:
    """Warn (and return True) when ``sigma`` (``sigmas[group]``) is below half the spacing
    of a half-precision parameter's values for most of its elements: ``mu +- sigma z``
    then rounds back to ``mu``, the three gradients coincide and ``H``, ``R`` read zero."""
    for b in state.buckets:
        if not b.half or not b.numel:
            continue
        sigma = sigmas[b.group]
        vanishing = _math.vanishing_perturbation(sigma, b.buffers["mu"], b.centre.dtype)
        shares = [float(v.mean()) for v in b.views(vanishing) if v.numel()]
        worst = max(range(len(shares)), key=shares.__getitem__)
        if shares[worst] > 0.5:
            warnings.warn(
                f"Alice: lr = sigma = {sigma:g} is below half the {b.centre.dtype} spacing for "
                f"{100 * shares[worst]:.0f}% of the elements of a parameter of shape "
                f"{tuple(b.params[worst].shape)} (param group {b.group}): there mu +- sigma z rounds back "
                "to mu, the perturbed gradients equal the unperturbed one and H and R read zero. "
                "Keep float32 parameters and train under torch.autocast instead.",
                RuntimeWarning,
                stacklevel=4,
            )
            return True
    return False
