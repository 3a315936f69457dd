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

__all__ = ["CLOSURE_HELP", "ClosureError", "LoopError", "eval_mode", "gradients_before_step", "no_closure", "not_callable", "step_in_closure"]


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


def no_closure() -> ClosureError:
    return ClosureError(
        "Alice.step() got no closure. Either pass one (exact Alice; with the HF Trainer, use "
        "alice.integrations.hf.AliceTrainer, which passes it), or, for training loops that "
        "call step() themselves (HF Trainer, timm, GradScaler, accumulation by the loop), build "
        "the optimizer with Alice(..., closure_free=True), an approximation documented in the "
        "README.\n" + CLOSURE_HELP
    )


def not_callable(closure) -> ClosureError:
    return ClosureError(f"Alice.step() got closure={closure!r}, which is not callable.\n" + CLOSURE_HELP)


def step_in_closure() -> LoopError:
    return LoopError("Alice.step() was called from inside its own closure; the closure "
                     "must only evaluate the model and call backward().")


def eval_mode() -> LoopError:
    return LoopError("Alice is in eval mode (the parameters hold mu): call optimizer.train() "
                     "before training steps, optimizer.eval() before evaluating or saving.")


def gradients_before_step() -> LoopError:
    return LoopError(
        "Gradients were computed before Alice.step(closure) (backward ran outside the "
        "closure, e.g. to accumulate micro-batches); Alice would discard them, since it "
        "evaluates the closure itself at perturbed points. Accumulate inside the closure "
        "(loop over the micro-batches there, calling backward on each), or call "
        "optimizer.zero_grad() before step() if those gradients are not needed."
    )
