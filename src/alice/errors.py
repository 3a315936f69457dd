"""The errors Alice raises for misuse, one type per kind.

* ``ValueError``: an invalid argument, hyperparameter, param group or state dict
  (the message names it and its value);
* :class:`ClosureError`: the closure given to ``step()`` is missing, not callable,
  returns no scalar loss, or computes no gradient;
* :class:`LoopError`: the training loop around Alice calls it in a way it cannot
  honour: ``step()`` from inside its own closure, a training step in eval mode
  (closure-free), gradients computed before ``step(closure)``, or a framework loop
  that would drop or rescale the closure's gradients (``GradScaler.step`` with a
  closure, Accelerate's accumulation, Lightning or Trainer settings that do not fit).
"""

from __future__ import annotations

__all__ = ["CLOSURE_HELP", "ClosureError", "LoopError"]


class ClosureError(RuntimeError):
    """The closure is missing, not callable, returns no scalar loss or computes no gradient."""


class LoopError(RuntimeError):
    """The training loop calls Alice in a way it cannot honour; the message says what to do."""


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
