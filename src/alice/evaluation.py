"""The closure protocol: where each gradient is taken and how it reaches the buffers.

One step evaluates the user's closure at ``nu + sigma z`` and ``nu - sigma z``
(sampling steps) and at ``nu``. :class:`Evaluations` moves the parameters to
each point with a few multi-tensor copies per flat buffer, lets backward write
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
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _math
from . import distributed as _dist
from .functional import point_
from .state import AliceState, Bucket

__all__ = ["CLOSURE_HELP", "ClosureError", "Evaluations", "Replay", "losses_finite"]


class ClosureError(RuntimeError, TypeError, ValueError):
    """A missing closure, or one that does not return a scalar loss or compute gradients."""


CLOSURE_HELP = (
    "Alice.step() needs a closure that re-evaluates the model on the current batch, "
    "calls loss.backward() and returns the loss, e.g.\n"
    "    def closure():\n"
    "        optimizer.zero_grad()\n"
    "        loss = loss_fn(model(x), y)\n"
    "        loss.backward()\n"
    "        return loss\n"
    "    optimizer.step(closure)\n"
    "Alice evaluates it at perturbed parameters (three times on a sampling step)."
)


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


class Evaluations:
    """The evaluations of one step over the optimizer's buckets.

    ``scales[i]`` is the perturbation length of bucket ``i`` (its group's lr; 0
    for a group whose lr is 0, which is evaluated at ``nu`` only).
    """

    def __init__(self, state: AliceState, scales: list[float], key: int, paths: list[dict]):
        self.buckets = state.buckets
        self.scales, self.key, self.paths = scales, key, paths
        self.at_centre: list[bool] = []  # whether bucket i's parameters hold mu
        self.touched: list[list[bool]] = [[True] * len(b.params) for b in self.buckets]  # in every evaluation
        self.last: list[list[bool]] = [[] for _ in self.buckets]  # in the last one

    def gather(self) -> None:
        """Read into ``held`` the parameters edited since Alice last wrote them (all, at
        first): ``held`` is the centre ``mu``. For half-precision parameters the float32
        centre follows an edit of the parameter."""
        self.at_centre = []
        for b in self.buckets:
            edited = b.edited()
            targets = b.targets()
            _foreach_copy_([b.held_views[k] for k in edited], [targets[k] for k in edited])
            if b.half and edited:
                b.buffers["mu"].copy_(_math.recentre(b.buffers["mu"], b.held))
            self.at_centre.append(True)

    def restore(self) -> None:
        """Parameters back to ``held`` (the centre, or the new centre after the update)."""
        for i, b in enumerate(self.buckets):
            _foreach_copy_(b.targets(), b.held_views)
            b.note_written()
            self.at_centre[i] = True

    def abandon(self) -> None:
        """Give the step up: parameters back at the centre, gradient buffers zeroed and
        accounted for, so that the next step runs as if this one had not begun."""
        self.restore()
        self.arm()

    def move_to(self, direction: float) -> None:
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
                _foreach_copy_(b.targets(), b.grad_tensors)
            self.at_centre[i] = False

    def evaluate(self, closure: Callable[[], Any]) -> Any:
        """Run the closure with zeroed gradient buffers; record who got a gradient."""
        self.arm()
        with torch.enable_grad():
            loss = check_loss(closure())
        self.collect()
        return loss

    def arm(self) -> None:
        """Zeroed gradient buffers, with every ``p.grad`` over them: backward accumulates there."""
        for b in self.buckets:
            b.grads.zero_()
            b.point_grads_at_buffers()

    def collect(self) -> None:
        """Record which parameters received a gradient since :meth:`arm`."""
        for i, b in enumerate(self.buckets):
            self.last[i] = self._collect(b)
            self.touched[i] = [t and u for t, u in zip(self.touched[i], self.last[i])]

    @staticmethod
    def _collect(b: Bucket) -> list[bool]:
        """Which parameters received a gradient in this evaluation; copies into the
        buffer the gradients that backward put elsewhere (a closure that set
        ``p.grad = None``, as ``model.zero_grad()`` does, gets a fresh tensor; so does
        every sharded parameter: FSDP2 sets a DTensor, whose local shard is copied)."""
        dst, src, touched = [], [], []
        for p, g, seen in zip(b.params, b.grad_tensors, b.seen):
            grad = p.grad
            touched.append(b.new_grad(grad, seen))
            if grad is not None and grad is not g:
                dst.append(g)
                grad = _dist.local_tensor(grad) if b.sharded else grad
                src.append(grad.to_dense() if grad.is_sparse else grad)  # the update is dense anyway
        _foreach_copy_(dst, src)
        b.point_grads_at_buffers(clear=False)  # a sharded parameter keeps FSDP2's gradient
        return touched

    def save_gradients(self, sign: float) -> None:
        """Keep the gradients just taken at ``nu + sign * sigma z``."""
        for b in self.buckets:
            b.ensure_sampling_buffers()
            (b.plus if sign > 0 else b.minus).copy_(b.grads)

    def release_untouched(self) -> None:
        """``p.grad = None`` for parameters that received no gradient at ``nu``, as after
        an ordinary backward."""
        for b, touched in zip(self.buckets, self.last):
            for p, t in zip(b.params, touched):
                if not t:
                    p.grad = None
