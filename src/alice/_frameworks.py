"""Training loops that would run a closure-mode Alice wrongly, refused with the fix.

``Alice.step(closure)`` calls :func:`refuse_framework_loops` on every step. It
reads, duck-typed and without importing any framework, who called it:

- ``torch.amp.GradScaler.step(optimizer, closure)``: the scaler refuses a closure
  passed by keyword only; passed positionally it reaches Alice, whose closure would
  then backpropagate the scaled loss (gradients 65536x) with nothing to unscale them.
- Accelerate's ``AcceleratedOptimizer.step(closure)`` under
  ``gradient_accumulation_steps > 1``: Accelerate calls the optimizer on the syncing
  micro-batch only, so the other micro-batches would be silently dropped.
- A Lightning closure (checked once, at the first step): the Trainer settings that
  do not fit an optimizer which evaluates its closure itself (:func:`check_lightning_trainer`).

``alice.integrations`` builds on these checks; nothing here imports it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from .errors import LoopError

__all__ = ["check_lightning_trainer", "lightning_trainer", "refuse_framework_loops"]

FIX_FREE = "or build the optimizer with Alice(..., closure_free=True) (an approximation; see docs/integrations.md)"
_DEPTH = 8  # caller frames looked at: the wrappers between a framework's call and Alice.step


def _caller(frame: Any, filename_end: str, function: str) -> Any:
    """The first of ``_DEPTH`` frames above ``frame`` running ``function`` of a file
    whose path ends with ``filename_end``, else None."""
    for _ in range(_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name == function and code.co_filename.replace("\\", "/").endswith(filename_end):
            return frame
        frame = frame.f_back
    return None


def refuse_framework_loops(closure: Any, first: bool) -> None:
    """Raise :class:`alice.LoopError` with the fix when a framework passed ``closure`` to a
    closure-mode Alice in a way that cannot be exact (see the module doc); ``first``:
    this is the optimizer's first step (the Lightning Trainer is checked then)."""
    frame = sys._getframe(2)  # above Alice.step and its no_grad wrapper
    if _caller(frame, "amp/grad_scaler.py", "_maybe_opt_step") is not None:
        raise LoopError(
            "Alice.step(closure) was called through torch.amp.GradScaler.step(optimizer, closure): the "
            "closure's backward would give Alice gradients multiplied by the loss scale, which the scaler "
            "unscales only outside the closure. With a GradScaler, build the optimizer with "
            "Alice(..., closure_free=True) and call scaler.step(optimizer) without a closure (an "
            "approximation; see docs/integrations.md); for exact Alice use bf16 autocast, which needs no scaler."
        )
    accelerated = _caller(frame, "accelerate/optimizer.py", "step")
    if accelerated is not None:
        steps = getattr(getattr(accelerated.f_locals.get("self"), "gradient_state", None), "num_steps", 1)
        if isinstance(steps, int) and steps > 1:
            raise LoopError(
                f"Alice.step(closure) inside accelerator.accumulate() with gradient_accumulation_steps={steps}: "
                "Accelerate calls the optimizer only on the syncing micro-batch, so the other micro-batches "
                "would be dropped. Leave gradient_accumulation_steps at 1 and pass all micro-batches to one "
                "closure with alice.integrations.accelerate.micro_batch_closure, stepping with "
                f"alice.integrations.accelerate.alice_step, {FIX_FREE}."
            )
    if first:
        trainer = lightning_trainer(closure)
        if trainer is not None:
            handled = any(getattr(c, "clips_alice_evaluations", False) for c in getattr(trainer, "callbacks", []))
            check_lightning_trainer(trainer, clipping_handled=handled)


def lightning_trainer(closure: Any) -> Any:
    """The Lightning Trainer behind a closure that Lightning passed to ``optimizer.step``
    (its precision plugin wraps it as ``partial(plugin._wrap_closure, module, optimizer,
    closure)``), else None."""
    if not isinstance(closure, functools.partial) or not closure.args:
        return None
    if not (getattr(closure.func, "__module__", "") or "").startswith(("lightning.", "pytorch_lightning.")):
        return None
    return getattr(closure.args[0], "_trainer", None)


def check_lightning_trainer(trainer: Any, clipping_handled: bool = False) -> None:
    """Raise :class:`alice.LoopError` with the fix when ``trainer`` (a Lightning Trainer) would
    run a closure-mode Alice wrongly: 16-mixed loss scaling, ``accumulate_grad_batches
    > 1``, or Lightning's own gradient clipping (``clipping_handled``: an
    ``AliceCallback`` clips every evaluation by one factor instead)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is not None:
        raise LoopError(
            f"Alice cannot run with precision={trainer.precision!r} (loss scaling with a GradScaler): "
            "Lightning then evaluates the closure once itself and calls optimizer.step() without it, "
            "so Alice cannot re-evaluate at its perturbed points. Use precision='bf16-mixed' "
            f"(no loss scaling) or '32-true', {FIX_FREE}."
        )
    if getattr(trainer, "accumulate_grad_batches", 1) > 1:
        raise LoopError(
            f"Alice cannot run with accumulate_grad_batches={trainer.accumulate_grad_batches}: Lightning "
            "computes the earlier micro-batches' gradients outside the closure Alice evaluates. Use a "
            "larger batch (or loop over micro-batches inside training_step with manual optimisation), "
            f"{FIX_FREE}."
        )
    clip = getattr(trainer, "gradient_clip_val", None)
    if clip and not clipping_handled:
        raise LoopError(
            f"Alice with gradient_clip_val={clip!r}: Lightning would clip the three gradients of a "
            "sampling step each by its own norm, which corrupts Alice's curvature estimates. Set "
            "gradient_clip_val=None and pass callbacks=[AliceCallback(gradient_clip_val=...)], which "
            "clips every evaluation of one step by the same factor."
        )
