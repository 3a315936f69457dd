"""Alice in PyTorch Lightning.

Lightning's automatic optimisation passes a closure to ``optimizer.step``, so Alice
runs exactly there: on a sampling step the closure, and with it ``training_step``,
``backward`` and the ``on_before_optimizer_step`` hooks, runs three times (at
``nu + sigma z``, ``nu - sigma z`` and ``nu``). Three Trainer settings do not fit
that, and :class:`AliceCallback` (or :func:`check_trainer`) refuses them with the fix:

- ``precision="16-mixed"`` (a ``GradScaler``): Lightning runs the closure once itself
  and then calls ``scaler.step(optimizer)`` without it.
- ``accumulate_grad_batches > 1``: the earlier micro-batches' gradients are computed
  outside the closure (Alice refuses them at the first step anyway).
- ``gradient_clip_val``: Lightning would clip ``g+``, ``g-`` and ``g0`` each by its
  own norm, which corrupts the curvature estimates; ``AliceCallback(gradient_clip_val=...)``
  clips all three by one factor instead (:class:`~alice.integrations.ConsistentClip`).

With ``Alice(..., closure_free=True)`` all three work (the mode is an approximation:
see ``docs/integrations.md``). :func:`at_center` tells ``training_step`` whether it
runs at ``nu``, so that it can log only there. Importing this module imports Lightning
(``import alice`` does not).
"""

from __future__ import annotations

import functools
from typing import Any

from ._common import ConsistentClip, find_alice
from ._common import at_center as _at_center

try:
    from lightning.pytorch import Callback as _Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning import Callback as _Callback
    except ImportError as error:
        raise ImportError("alice.integrations.lightning needs Lightning: pip install alice-optimizer[lightning]") from error

__all__ = ["AliceCallback", "at_center", "check_closure", "check_trainer"]

_FIX_FREE = "or build the optimizer with Alice(..., closure_free=True) (an approximation; see docs/integrations.md)"


def _alices(trainer: Any) -> list:
    return [a for a in (find_alice(o, required=False) for o in getattr(trainer, "optimizers", []) or []) if a]


def at_center(module_or_optimizer: Any) -> bool:
    """Whether ``training_step`` runs at ``nu`` (True) or at a perturbed point of a
    sampling step (False). Pass the LightningModule (``at_center(self)``), its
    ``self.optimizers()``, or an optimizer. Typical use::

        if at_center(self):
            self.log("train_loss", loss)
    """
    trainer = getattr(module_or_optimizer, "_trainer", None)
    if trainer is not None:  # a LightningModule attached to a Trainer
        return all(_at_center(a) for a in _alices(trainer))
    if getattr(module_or_optimizer, "automatic_optimization", None) is not None:
        return True  # a LightningModule not attached to a Trainer: nothing is stepping
    return _at_center(module_or_optimizer)


def check_trainer(trainer: Any, clipping_handled: bool = False) -> None:
    """Raise ``ValueError`` with the fix when ``trainer`` would run a closure-mode
    Alice wrongly (16-mixed loss scaling, ``accumulate_grad_batches > 1``, Lightning's
    own gradient clipping). ``clipping_handled``: an :class:`AliceCallback` clips."""
    exact = [a for a in _alices(trainer) if not a.closure_free]
    if not exact:
        return
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is not None:
        raise ValueError(
            f"Alice cannot run with precision={trainer.precision!r} (loss scaling with a GradScaler): "
            "Lightning then evaluates the closure once itself and calls optimizer.step() without it, "
            "so Alice cannot re-evaluate at its perturbed points. Use precision='bf16-mixed' "
            f"(no loss scaling) or '32-true', {_FIX_FREE}."
        )
    if getattr(trainer, "accumulate_grad_batches", 1) > 1:
        raise ValueError(
            f"Alice cannot run with accumulate_grad_batches={trainer.accumulate_grad_batches}: Lightning "
            "computes the earlier micro-batches' gradients outside the closure Alice evaluates. Use a "
            "larger batch (or loop over micro-batches inside training_step with manual optimisation), "
            f"{_FIX_FREE}."
        )
    clip = getattr(trainer, "gradient_clip_val", None)
    if clip and not clipping_handled:
        raise ValueError(
            f"Alice with gradient_clip_val={clip!r}: Lightning would clip the three gradients of a "
            "sampling step each by its own norm, which corrupts Alice's curvature estimates. Set "
            "gradient_clip_val=None and pass callbacks=[AliceCallback(gradient_clip_val=...)], which "
            "clips every evaluation of one step by the same factor."
        )


def trainer_of_closure(closure: Any) -> Any:
    """The Lightning Trainer behind a closure that Lightning passed to ``optimizer.step``
    (its precision plugin wraps it as ``partial(plugin._wrap_closure, module, optimizer,
    closure)``), else None."""
    if not isinstance(closure, functools.partial) or not closure.args:
        return None
    if not getattr(closure.func, "__module__", "").startswith(("lightning.", "pytorch_lightning.")):
        return None
    return getattr(closure.args[0], "_trainer", None)


def check_closure(optimizer: Any, closure: Any) -> None:
    """:func:`check_trainer` for the Trainer behind a Lightning closure, if it is one:
    meant for ``Alice.step`` to call on its first step, so that the refusals hold
    without :class:`AliceCallback` (clipping done by an ``AliceCallback`` is allowed)."""
    trainer = trainer_of_closure(closure)
    if trainer is not None:
        handled = any(isinstance(c, AliceCallback) and c.clip is not None for c in getattr(trainer, "callbacks", []))
        check_trainer(trainer, clipping_handled=handled)


class AliceCallback(_Callback):
    """Checks the Trainer's configuration at fit start (:func:`check_trainer`) and,
    with ``gradient_clip_val``, clips the gradients of every evaluation of one Alice
    step by one factor (in ``on_before_optimizer_step``, which Lightning runs after
    each evaluation of the closure). Leave the Trainer's own ``gradient_clip_val`` unset.
    :attr:`last_grad_norm` is the gradient norm at ``nu`` (before clipping) of the last step.

    Example::

        trainer = L.Trainer(callbacks=[AliceCallback(gradient_clip_val=1.0)], precision="bf16-mixed")
    """

    def __init__(self, gradient_clip_val: float | None = None, norm_type: float = 2.0):
        super().__init__()
        self.clip = None if not gradient_clip_val else ConsistentClip(gradient_clip_val, norm_type)

    @property
    def last_grad_norm(self):
        return None if self.clip is None else self.clip.center_norm

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.clip is not None and trainer.gradient_clip_val:
            raise ValueError(
                "AliceCallback(gradient_clip_val=...) clips already; the Trainer's gradient_clip_val="
                f"{trainer.gradient_clip_val!r} would clip again, per evaluation: set it to None."
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        check_trainer(trainer, clipping_handled=self.clip is not None)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.clip is not None and find_alice(optimizer, required=False) is not None:
            self.clip(optimizer)
