"""Alice with the Hugging Face ``Trainer``.

The plain ``Trainer`` calls ``optimizer.step()`` without a closure, after it has
accumulated the micro-batches' gradients and clipped them. Two ways run Alice there:

- :class:`AliceTrainer` (exact Alice): a ``Trainer`` whose step is an Alice step.
  It keeps the micro-batches of one accumulation window and, on the window's last
  one, calls ``Alice.step(closure)``, where the closure replays them all (forward
  and backward through the Trainer's own ``training_step``, so loss scaling for
  accumulation, ``num_items_in_batch``, autocast and DDP behave as usual). A
  sampling step thus costs three passes over the window, a quick step one.
  ``max_grad_norm`` clips every evaluation of one step by the same factor
  (:class:`~alice.integrations.ConsistentClip`), and the logged ``grad_norm`` is the
  norm at ``nu`` before clipping. ``fp16=True`` (loss scaling) and DeepSpeed are
  refused with the fix; ``bf16=True`` works.
- ``Alice(..., closure_free=True)`` with the plain ``Trainer`` (or ``AliceTrainer``):
  every ``step()`` consumes the accumulated, clipped gradient; a sampling step spans
  three optimizer steps (an approximation, see ``docs/integrations.md``). Add
  :class:`ClosureFreeCallback` so that checkpoints and the final model hold ``mu``
  (``AliceTrainer`` adds it itself).

``AliceTrainer`` builds an Alice from the ``TrainingArguments`` when no optimizer
is passed: ``lr = learning_rate``, ``betas = (adam_beta1, adam_beta2)``,
``eps = adam_epsilon``, and ``weight_decay`` as Alice's decoupled ``weight_decay``
(as AdamW takes it) on the parameters the Trainer would decay. :class:`CurvatureCallback`
reads the curvature instrument during training, with any optimizer. Importing this module imports transformers
(``import alice`` does not).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import LoopError
from ..optimizer import Alice
from ._common import ConsistentClip, _total_norm, find_alice

try:
    from transformers import Trainer, TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("alice.integrations.hf needs transformers: pip install alice-optimizer[hf]") from error

__all__ = ["AliceTrainer", "ClosureFreeCallback", "CurvatureCallback"]


class ClosureFreeCallback(TrainerCallback):
    """For a closure-free Alice under the plain ``Trainer``: puts the centre ``mu`` in
    the parameters (``optimizer.eval()``) before the Trainer evaluates or saves, and at
    the end of training, so that checkpoints and ``trainer.save_model()`` hold ``mu``
    rather than the point of the next gradient. The Trainer's next ``training_step``
    calls ``optimizer.train()``, which puts that point back."""

    @staticmethod
    def _eval(optimizer: Any) -> None:
        alice = find_alice(optimizer, required=False)
        if alice is not None and alice.closure_free:
            alice.eval()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if control.should_save or control.should_evaluate:
            self._eval(optimizer)

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        if control.should_save or control.should_evaluate:
            self._eval(optimizer)

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        self._eval(optimizer)


class _ResumeSync(TrainerCallback):
    """Undoes, right after the Trainer's (skipped) ``optimizer.step()``, the flag that
    made it skip, so that the lr scheduler steps as usual."""

    def __init__(self, trainer: AliceTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer._stepped:
            self.trainer._stepped = False
            self.trainer.accelerator.gradient_state._set_sync_gradients(True)


def _has_running_stats(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats for m in model.modules())


class AliceTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer step is an exact Alice step.

    Use it as the ``Trainer`` (same arguments). With ``optimizers=(Alice(...), None)``
    it uses that Alice; without, it builds one from the ``TrainingArguments``.
    ``training_step`` then runs once per micro-batch as usual, but the forward and
    backward passes happen on the window's last micro-batch, inside Alice's closure
    (three times over the window on a sampling step). Callbacks' ``on_pre_optimizer_step``
    and ``on_optimizer_step`` run after Alice's step; the gradients they see are those
    at ``nu``.

    Example::

        trainer = AliceTrainer(model=model, args=TrainingArguments(..., learning_rate=1e-3),
                               train_dataset=ds)
        trainer.train()
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        missing = [m for m in ("_clip_grad_norm", "_get_grad_norm") if not hasattr(Trainer, m)]
        if missing:
            import transformers

            raise RuntimeError(f"AliceTrainer needs transformers >= 5 (Trainer.{missing[0]} is missing in "
                               f"transformers {transformers.__version__})")
        super().__init__(*args, **kwargs)
        self._micro_batches: list[tuple[Any, Any]] = []
        self._stepped = False
        self._norm: torch.Tensor | None = None
        self._checked = False
        self.add_callback(_ResumeSync(self))
        self.add_callback(ClosureFreeCallback())

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
            self.optimizer = Alice(
                groups, lr=self.args.learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon, model=model if _has_running_stats(model) else None,
            )
        elif find_alice(self.optimizer, required=False) is None:
            raise TypeError(f"AliceTrainer needs an alice.Alice optimizer, got {type(self.optimizer).__name__}; "
                            "use transformers.Trainer for other optimizers.")
        return self.optimizer

    def _check(self, alice: Alice) -> None:
        if self._checked:
            return
        if alice.closure_free:
            self._checked = True
            return
        if getattr(self.accelerator, "scaler", None) is not None:
            raise LoopError(
                "AliceTrainer cannot run exact Alice with fp16=True: the loss scaler unscales gradients only "
                "in optimizer.step(), after Alice has used them. Use bf16=True (no loss scaling), or "
                "Alice(..., closure_free=True) (with this Trainer or the plain one; an approximation, "
                "see docs/integrations.md)."
            )
        if self.is_deepspeed_enabled:
            raise LoopError("AliceTrainer does not support DeepSpeed (its engine takes the optimizer step); "
                             "use DDP or FSDP through Accelerate.")
        if not hasattr(self.accelerator.gradient_state, "_set_sync_gradients"):
            raise RuntimeError("AliceTrainer relies on accelerate's GradientState._set_sync_gradients, "
                               "which this accelerate version lacks; please report the versions in use.")
        self._checked = True

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        alice = find_alice(self.optimizer)
        self._check(alice)
        if alice.closure_free:
            return super().training_step(model, inputs, num_items_in_batch)
        self._micro_batches.append((inputs, num_items_in_batch))
        if not self.accelerator.sync_gradients:  # more micro-batches to come in this window
            return torch.zeros((), device=self.args.device)
        window, self._micro_batches = self._micro_batches, []
        clip = ConsistentClip(self.args.max_grad_norm) if self.args.max_grad_norm > 0 else None
        parent = super()

        def closure() -> torch.Tensor:
            total = None
            for batch, items in window:
                loss = parent.training_step(model, batch, items)  # forward, scaling for accumulation, backward
                total = loss if total is None else total + loss
            if clip is not None:
                clip(alice)
            return total

        loss = alice.step(closure)
        self._norm = clip.center_norm if clip is not None else None
        # The Trainer will call optimizer.step() next: this window's step is taken, so
        # let Accelerate's wrapper skip it (the callback _ResumeSync undoes this).
        self._stepped = True
        self.accelerator.gradient_state._set_sync_gradients(False)
        return loss.detach().to(self.args.device)

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        if self._stepped:  # clipped inside the closure, consistently
            return self._norm
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        if self._stepped and grad_norm is None:  # no clipping: the norm at nu, where p.grad was taken
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = _total_norm(grads, 2.0) if grads else None
        return super()._get_grad_norm(model, grad_norm=grad_norm)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


class CurvatureCallback(TrainerCallback):
    """The curvature instrument (:class:`alice.diagnostics.CurvatureMonitor`) during HF
    ``Trainer`` training, with any optimizer: on each ``on_step_end`` it counts the step
    (``state.global_step``) and, on the schedule, measures on the fixed ``batches`` (the
    Trainer does not pass the training batch to callbacks).

    Args:
        batches: batches to measure on (dicts of tensors, as the model takes them; moved
            to the model's device once).
        loss_fn: ``loss_fn(model, batch)``; default ``model(**batch).loss``.
        log: as the monitor's (a ``SummaryWriter``, ``wandb.log``, a JSON-lines path);
            default: none (the readings stay in ``callback.monitor.records``).
        sigma: the instrument's sigma; default: the optimizer's current lr.
        every, cost, **monitor_kwargs: as :class:`~alice.diagnostics.CurvatureMonitor`.

    Example::

        callback = CurvatureCallback([held_batch], every=200, log="curvature.jsonl")
        Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    """

    def __init__(self, batches: Any, loss_fn: Any = _model_loss, *, every: Any = 100, cost: str = "economy",
                 sigma: float | None = None, log: Any = None, **monitor_kwargs: Any):
        if not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable as loss_fn(model, batch))")
        self.batches = list(batches) if isinstance(batches, (list, tuple)) else [batches]
        if not self.batches:
            raise ValueError("Invalid batches: empty (give at least one batch)")
        self.loss_fn = loss_fn
        self.options = dict(every=every, cost=cost, sigma=sigma, log=log, **monitor_kwargs)
        self.monitor = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from ..diagnostics import CurvatureMonitor

        device = next(model.parameters()).device
        sigma_from = optimizer if self.options["sigma"] is None else None
        self.monitor = CurvatureMonitor(model, self.loss_fn, optimizer=sigma_from,
                                        batches=[_to_device(b, device) for b in self.batches], **self.options)

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.step(step=state.global_step)
