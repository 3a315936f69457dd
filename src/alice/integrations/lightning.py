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
runs at ``nu``, so that it can log only there. :class:`CurvatureCallback` reads the
curvature instrument during training, with any optimizer. Importing this module imports Lightning
(``import alice`` does not).
"""

from __future__ import annotations

from typing import Any

from .._frameworks import check_lightning_trainer
from ..errors import LoopError
from ._common import ConsistentClip, find_alice
from ._common import at_center as _at_center

try:
    from lightning.pytorch import Callback as _Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning import Callback as _Callback
    except ImportError as error:
        raise ImportError("alice.integrations.lightning needs Lightning: pip install alice-optimizer[lightning]") from error

__all__ = ["AliceCallback", "CurvatureCallback", "at_center", "check_trainer"]


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
    """Raise :class:`alice.LoopError` with the fix when ``trainer`` would run a closure-mode
    Alice wrongly (16-mixed loss scaling, ``accumulate_grad_batches > 1``, Lightning's
    own gradient clipping). ``clipping_handled``: an :class:`AliceCallback` clips.
    ``Alice.step`` runs the same check on a Lightning closure's Trainer at its first step."""
    if any(not a.closure_free for a in _alices(trainer)):
        check_lightning_trainer(trainer, clipping_handled)


class AliceCallback(_Callback):
    """Checks the Trainer's configuration at fit start (:func:`check_trainer`) and,
    with ``gradient_clip_val``, clips the gradients of every evaluation of one Alice
    step by one factor (in ``on_before_optimizer_step``, which Lightning runs after
    each evaluation of the closure). Leave the Trainer's own ``gradient_clip_val`` unset.
    :attr:`last_grad_norm` is the gradient norm at ``nu`` (before clipping) of the last step.

    For a closure-free Alice it also keeps the centre ``mu`` where Lightning looks at the
    model (Lightning never calls ``optimizer.eval()``): validation runs at ``mu`` (then
    training goes on from the evaluation point), checkpoints hold ``mu``, and the fitted
    module ends at ``mu``.

    Example::

        trainer = L.Trainer(callbacks=[AliceCallback(gradient_clip_val=1.0)], precision="bf16-mixed")
    """

    def __init__(self, gradient_clip_val: float | None = None, norm_type: float = 2.0):
        super().__init__()
        self.clip = None if not gradient_clip_val else ConsistentClip(gradient_clip_val, norm_type)

    @property
    def clips_alice_evaluations(self) -> bool:
        """Whether this callback clips (so the Trainer must not): read by ``Alice.step``."""
        return self.clip is not None

    @property
    def last_grad_norm(self):
        return None if self.clip is None else self.clip.center_norm

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.clip is not None and trainer.gradient_clip_val:
            raise LoopError(
                "AliceCallback(gradient_clip_val=...) clips already; the Trainer's gradient_clip_val="
                f"{trainer.gradient_clip_val!r} would clip again, per evaluation: set it to None."
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        check_trainer(trainer, clipping_handled=self.clip is not None)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.clip is not None and find_alice(optimizer, required=False) is not None:
            self.clip(optimizer)

    # -- closure-free mode: mu in the parameters wherever Lightning reads them -----------

    @staticmethod
    def _closure_free(trainer: Any) -> list:
        return [a for a in _alices(trainer) if a.closure_free]

    def _at_mu(self, trainer: Any) -> None:
        for alice in self._closure_free(trainer):
            alice.eval()

    def _at_point(self, trainer: Any) -> None:
        for alice in self._closure_free(trainer):
            alice.train()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._at_point(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._at_mu(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # validation within fit (trainer.training is False while it runs): training goes on
        # from the evaluation point
        if trainer.state.fn == "fit":
            self._at_point(trainer)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        alices = [a for a in self._closure_free(trainer) if a.evaluation is not None]
        if not alices:
            return
        for alice in alices:  # Lightning read the module's state already: read it again at mu
            alice.eval()
        if "state_dict" in checkpoint:
            state = trainer.strategy.lightning_module_state_dict()  # (views of the parameters: copied)
            checkpoint["state_dict"] = {k: v.clone() if hasattr(v, "clone") else v for k, v in state.items()}
        for alice in alices:
            alice.train()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._at_mu(trainer)


class CurvatureCallback(_Callback):
    """The curvature instrument (:class:`alice.diagnostics.CurvatureMonitor`) during a
    Lightning fit, with any optimizer: after each optimizer step (``on_train_batch_end``
    at a new ``global_step``) it counts the step and, on the schedule, measures on the
    training batch (or on fixed ``batches``).

    Args:
        loss_fn: ``loss_fn(pl_module, batch)`` returning the scalar loss (not
            ``training_step``, which would log at the perturbed points).
        log: as the monitor's; default: every logger of the Trainer (``log_metrics``).
        sigma: the instrument's sigma; default: the first optimizer's current lr.
        every, cost, batches, **monitor_kwargs: as :class:`~alice.diagnostics.CurvatureMonitor`.

    The monitor (and its ``records``) is :attr:`monitor`, built at the start of training.

    Example::

        callback = CurvatureCallback(lambda m, b: F.cross_entropy(m(b[0]), b[1]), every=200)
        L.Trainer(callbacks=[callback]).fit(module)
        callback.monitor.plot("curvature.png")
    """

    def __init__(self, loss_fn: Any, *, every: Any = 100, cost: str = "economy", sigma: float | None = None,
                 batches: Any = None, log: Any = None, **monitor_kwargs: Any):
        super().__init__()
        if not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable as loss_fn(pl_module, batch))")
        self.loss_fn, self.sink = loss_fn, log
        self.options = dict(every=every, cost=cost, sigma=sigma, batches=batches, **monitor_kwargs)
        self.monitor = None
        self._last_step = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from ..diagnostics import CurvatureMonitor

        log = self.sink
        if log is None:
            log = [lambda values, step, logger=logger: logger.log_metrics(values, step=step)
                   for logger in trainer.loggers]
        optimizer = trainer.optimizers[0] if self.options["sigma"] is None and trainer.optimizers else None
        self.monitor = CurvatureMonitor(pl_module, self.loss_fn, optimizer=optimizer, log=log, **self.options)
        self._last_step = trainer.global_step  # (resumed runs start past 0)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.monitor is None or trainer.global_step == self._last_step:  # accumulating: no step yet
            return
        self._last_step = trainer.global_step
        self.monitor.step(batch, step=trainer.global_step)
