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
(as AdamW takes it) on the parameters the Trainer would decay. Importing this module imports transformers
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

__all__ = ["AliceTrainer", "ClosureFreeCallback"]


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
