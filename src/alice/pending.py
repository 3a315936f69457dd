"""One Alice step in progress: :class:`PendingStep`.

A step is planned when it begins (its param groups and their lrs, its count,
whether it samples, its evaluation points), then takes its gradients one phase
at a time, ``"plus"``, ``"minus"``, ``"center"`` on a sampling step and
``"center"`` alone on a quick step, and finally averages and moves. Both modes
drive the same object:

* closure mode (``step(closure)``): every phase inside one ``step()``, the closure
  run at each point (:meth:`PendingStep.point`, the closure, :meth:`PendingStep.take`),
  then :meth:`PendingStep.finish`;
* closure-free mode (``step()`` after the loop's own backward): one phase per
  ``step()``; between calls the parameters hold the next phase's point, and the
  step in progress is saved with the optimizer (:meth:`PendingStep.save`,
  :meth:`PendingStep.resume`).

The update runs as few kernel calls as it can: one per run of consecutive
parameters that took part in the same steps (their counts are equal), all
predicated on one device flag (the losses and every gradient sample finite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from . import _scalars
from . import distributed as _dist
from ._rademacher import tensor_key
from .errors import CLOSURE_HELP, ClosureError
from .functional import alice_, samples_ok
from .points import Points, Replay, losses_finite, run_closure
from .state import AliceState

__all__ = ["DIRECTIONS", "PHASES", "PendingStep", "take_every_gradient", "take_one_gradient"]

DIRECTIONS = {"plus": 1.0, "minus": -1.0, "center": 0.0}
"""Where each phase takes its gradient: ``nu + direction * sigma z``."""
PHASES = {True: ("plus", "minus", "center"), False: ("center",)}
"""The phases of a sampling step (True) and of a quick step."""


def _runs(active: list[bool], cohort: list[int]) -> list[tuple[int, int]]:
    """Maximal ``[first, last)`` runs of consecutive active parameters of one cohort
    (equal counts, so one kernel call serves the run)."""
    runs, k = [], 0
    while k < len(active):
        if not active[k]:
            k += 1
            continue
        first = k
        while k < len(active) and active[k] and cohort[k] == cohort[first]:
            k += 1
        runs.append((first, k))
    return runs


class PendingStep:
    """The step numbered ``calls + 1`` (if any group has lr > 0), over ``state``'s buckets.

    ``phase`` is the gradient it needs next; ``positioned`` whether the parameters
    hold that phase's point (else they hold the centre ``mu``).
    """

    def __init__(self, state: AliceState, param_groups: list[dict], *, calls: int, seed: int,
                 warmup_steps: int, quick_steps: int):
        self.state = state
        self.groups = [param_groups[b.group] for b in state.buckets]
        self.lrs = [_scalars.as_float(g["lr"]) for g in self.groups]
        for group, lr in zip(self.groups, self.lrs):
            if lr > 0 and group["lr0"] == 0:  # built at lr 0: bounds are relative to the first lr used
                group["lr0"] = lr
        self.advancing = any(lr > 0 for lr in self.lrs)  # else nothing changes and nothing counts
        self.call = calls + self.advancing
        self.sampling = self.advancing and _scalars.is_sampling_step(self.call, warmup_steps, quick_steps)
        self.moves = self.call > warmup_steps  # past the warm-up (a parameter also needs a sampling step)
        self.quick_steps = quick_steps
        self.phases = PHASES[self.sampling]
        self.taken = 0  # phases whose gradient is in
        self.losses: list[Any] = []
        self.positioned = False
        paths = [dict(foreach=g["foreach"], fused=g["fused"]) for g in self.groups]
        self.points = Points(state, self.lrs, tensor_key(seed, self.call), paths)
        self.rounding_key = tensor_key(seed, self.call, 1)  # noise of averages kept in bfloat16
        self.points.read_centre()

    @property
    def phase(self) -> str:
        return self.phases[min(self.taken, len(self.phases) - 1)]

    # -- the phases ---------------------------------------------------------------

    def point(self) -> None:
        """Parameters to the current phase's point, gradient buffers zeroed under them."""
        self.points.move(DIRECTIONS[self.phase])
        self.points.ready_grads()
        self.positioned = True

    def take(self, loss: Any = None) -> bool:
        """The current phase's gradient is in the buffers (and ``loss``, if not None, is
        its loss): keep it; True once every phase has its gradient."""
        self.points.take_grads()
        self.positioned = False
        if loss is not None:
            self.losses.append(loss)
        if self.phase != "center":
            self.points.keep_grads(DIRECTIONS[self.phase])
        self.taken += 1
        return self.taken == len(self.phases)

    def retake(self, loss: Any = None) -> None:
        """Undo the last :meth:`take` (of ``loss``): the same gradient is needed again, at
        the point the parameters still hold."""
        self.taken -= 1
        if loss is not None:
            self.losses.pop()
        self.points.ready_grads()
        self.positioned = True

    def cancel(self) -> None:
        """Give up the step: parameters back at the centre, gradient buffers zeroed and
        accounted for, so that the next step runs as if this one had not begun."""
        self.points.abandon()
        self.positioned = False

    def to_centre(self) -> None:
        """Parameters back at the centre ``mu`` (the step stays pending)."""
        self.points.to_centre()
        self.positioned = False

    def reread_centre(self) -> None:
        """Take parameters edited while they held the centre as the new centre."""
        self.points.read_centre()

    def active(self) -> list[list[bool]]:
        """Per bucket, the parameters that take part: a gradient in every evaluation, lr > 0."""
        active = [[t and lr > 0 for t in touched] for touched, lr in zip(self.points.touched, self.lrs)]
        if self.advancing and not any(any(a) for a in active):
            raise ClosureError(
                "No parameter received a gradient: the closure must call loss.backward().\n" + CLOSURE_HELP
            )
        return active

    # -- the update -----------------------------------------------------------------

    def finish(self, active: list[list[bool]], replay: Replay | None) -> Tensor | None:
        """Average and move every run of active parameters, predicated on one device flag;
        parameters back at the (new) centre. Returns the flag (``None`` when no group
        advances: then nothing changes). ``replay`` keeps the model's buffers where the
        step is taken and rewinds them where it is not."""
        if not self.advancing:  # every lr is 0: one evaluation at nu, nothing changes
            self.points.to_centre()
            if replay is not None:
                replay.rewind(rng=False)
            return None
        buckets = self.state.buckets
        device = buckets[0].device
        plan = []
        for b, group, act, path, sigma in zip(buckets, self.groups, active, self.points.paths, self.points.scales):
            scalars = _scalars.step_scalars(group, self.quick_steps)
            if scalars.sigma != sigma:  # closure-free: the lr changed since the points were set
                scalars = replace(scalars, sigma=sigma)
            for first, last in _runs(act, b.cohort):
                grads = b.gradients(b.starts[first], b.starts[last], self.sampling)
                plan.append((b, first, last, grads, scalars, path))
        ok = losses_finite(self.losses, device)
        agree = _dist.world_size() > 1  # then the ranks agree on the decision before anything is written
        if len(plan) > 1 or agree:
            flags = [ok, *(samples_ok(grads, scalars=scalars, **path).to(device, non_blocking=True)
                           for _b, _f, _l, grads, scalars, path in plan)]
            ok = _dist.agree_flag(torch.stack(flags).all())  # every rank takes the step, or none does
        check = len(plan) == 1 and not agree
        cohorts: dict[int, int] = {}
        for b, first, last, grads, scalars, path in plan:
            a, z = b.starts[first], b.starts[last]
            used = alice_(
                b.elements(a, z), grads, n=b.counts[first], ok=ok.to(b.device, non_blocking=True),
                move=self.moves and (self.sampling or b.sampled[first]), scalars=scalars,
                out=b.centre[a:z] if b.half else None, check=check, segments=b.segments(first, last),
                rounding=(b.base + a, self.rounding_key) if b.rounds else None, **path,
            )
            if check:
                ok = used
            b.counts[first:last].add_(used)
            cohort = cohorts.setdefault(b.cohort[first], self.state.new_cohort())
            for k in range(first, last):
                b.cohort[k] = cohort
                b.sampled[k] = b.sampled[k] or self.sampling
        self.points.to_centre()
        if replay is not None:
            replay.keep_if(ok)  # (a Replay without a model holds no buffers)
        return ok

    # -- checkpoints (closure-free mode) -------------------------------------------

    def save(self, state: dict, index: dict, param_groups: list[dict]) -> None:
        """Add to a state dict what this step needs to go on exactly: the phase, the centre,
        the gradients already taken and the perturbation length of its points."""
        for b, sigma in zip(self.state.buckets, self.points.scales):
            param_groups[b.group]["pending_sigma"] = sigma
            extra = {"mu": b.centre_views}
            if self.sampling and self.phase != "plus":
                extra["grad_plus"] = b.views(b.plus)
            if self.sampling and self.phase == "center":
                extra["grad_minus"] = b.views(b.minus)
            for key, views in extra.items():
                for p, view in zip(b.params, views):
                    state[index[id(p)]].setdefault(key, _dist.like_param(view.clone(), p))
        for packed in param_groups:
            packed["phase"] = self.phase

    @torch.no_grad()
    def resume(self, phase: str, sigmas: list[float], records: dict[int, dict]) -> None:
        """Continue from a saved step: at ``phase``, its points ``sigmas`` long, the centre
        and gradients taken from ``records`` (what :meth:`save` wrote); the parameters
        are left at the centre."""
        if self.sampling:
            self.taken = self.phases.index(phase)
        self.points.scales = [sigmas[b.group] for b in self.state.buckets]
        for b in self.state.buckets:
            for k, p in enumerate(b.params):
                record = records.get(id(p), {})
                a, z = b.starts[k], b.starts[k + 1]
                if "mu" in record:  # the saved centre, whatever the model file holds
                    if b.half:
                        b.buffers["mu"][a:z].copy_(record["mu"].reshape(-1))
                    b.centre[a:z].copy_(record["mu"].reshape(-1))
                for key in ("grad_plus", "grad_minus"):
                    if key in record:
                        b.ensure_sampling_buffers()
                        (b.plus if key == "grad_plus" else b.minus)[a:z].copy_(record[key].reshape(-1))
        self.to_centre()


# -- the two modes: one phase per call of step(), or all of them ------------------------


def take_every_gradient(step: PendingStep, closure: Callable[[], Any], model: torch.nn.Module | None):
    """Closure mode: run ``closure`` at every point of ``step``, then update. Returns the
    loss at ``nu`` and the step's decision (see :meth:`PendingStep.finish`). If anything
    fails, the parameters, the RNG streams, the model's buffers and the gradient
    bookkeeping are left as the step found them."""
    replay = Replay(model) if step.sampling or model is not None else None
    try:
        while True:
            step.point()
            loss = run_closure(closure)
            if step.take(loss):
                break
            replay.rewind()  # the same dropout masks, the same buffers, next time
        active = step.active()
    except BaseException:
        step.cancel()
        if replay is not None:
            replay.rewind()  # the RNG streams too: the next step sees what this one saw
        raise
    step.points.release_untouched()
    return loss, step.finish(active, replay)


def take_one_gradient(step: PendingStep, loss: Any):
    """Closure-free mode: the loop computed the gradient at ``step``'s current point (and
    ``loss``, or None); take it and put the parameters at the next point, or update if it
    was the last. Returns the step's decision once it is finished, else ``None``, and
    whether it finished."""
    if not step.take(loss):
        step.point()
        return None, False
    try:
        active = step.active()
    except ClosureError:
        step.retake(loss)
        raise
    return step.finish(active, None), True
