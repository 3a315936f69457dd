"""Alice through Hugging Face Accelerate.

Exact Alice (closure mode) needs the closure to run the model three times on a
sampling step, so it cannot sit inside ``accelerator.accumulate`` or under fp16
loss scaling. :func:`alice_step` takes the step through the optimizer that
``accelerator.prepare`` returned and returns the loss (Accelerate's
``AcceleratedOptimizer.step(closure)`` returns ``None``), after checking that
the accelerator's settings fit; :func:`micro_batch_closure` builds the closure
for one or several micro-batches with ``accelerator.backward``::

    model, optimizer, loader = accelerator.prepare(model, Alice(model.parameters(), lr=1e-3), loader)
    for batch in loader:
        closure = micro_batch_closure(accelerator, lambda b: loss_fn(model(b[0]), b[1]), [batch])
        loss = alice_step(accelerator, optimizer, closure)

For fp16 with loss scaling, or ``accelerator.accumulate``, build the optimizer with
``Alice(..., closure_free=True)`` and keep Accelerate's usual loop
(``accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()``): an
approximation, see ``docs/integrations.md``. This module imports nothing from
Accelerate; it reads the ``Accelerator`` it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import LoopError
from ._common import ConsistentClip, find_alice

__all__ = ["alice_step", "check_accelerator", "micro_batch_closure"]


def check_accelerator(accelerator: Any, optimizer: Any) -> None:
    """Raise :class:`alice.LoopError` with the fix where ``accelerator`` cannot run a
    closure-mode Alice exactly: fp16 loss scaling, or Accelerate's own gradient
    accumulation."""
    alice = find_alice(optimizer)
    if alice.closure_free:
        raise LoopError(
            "This Alice was built with closure_free=True: use Accelerate's usual loop "
            "(accelerator.backward(loss); optimizer.step(); optimizer.zero_grad()), not alice_step()."
        )
    if getattr(accelerator, "scaler", None) is not None:
        raise LoopError(
            f"Alice's closure mode cannot run under mixed_precision={accelerator.mixed_precision!r}: its "
            "loss scaling unscales gradients only in optimizer.step(), after Alice has used them, and a "
            "scaled step cannot re-evaluate the model. Use mixed_precision='bf16' (no loss scaling) or 'no', "
            "or build the optimizer with Alice(..., closure_free=True) and keep Accelerate's usual loop "
            "(an approximation; see docs/integrations.md)."
        )
    steps = getattr(accelerator, "gradient_accumulation_steps", 1)
    if steps > 1:
        raise LoopError(
            f"Accelerator(gradient_accumulation_steps={steps}): Accelerate divides each loss by {steps} "
            "and skips optimizer steps inside accelerator.accumulate(), while Alice evaluates the closure "
            "itself. Leave gradient_accumulation_steps at 1 and pass the micro-batches to one closure "
            "(micro_batch_closure(accelerator, compute_loss, micro_batches)), or build the optimizer with "
            "Alice(..., closure_free=True) and use accelerator.accumulate() (an approximation)."
        )
    if not getattr(accelerator, "sync_gradients", True):
        raise LoopError(
            "alice_step() called inside accelerator.accumulate() on a micro-batch that does not sync: "
            "pass all micro-batches to one closure instead (micro_batch_closure)."
        )


def alice_step(accelerator: Any, optimizer: Any, closure: Callable[[], Any]) -> Any:
    """One exact Alice step through Accelerate; returns the loss at ``nu``.

    ``optimizer`` is what ``accelerator.prepare`` returned (or the Alice itself). The
    step goes to the Alice inside, since ``AcceleratedOptimizer.step`` drops the
    closure's loss; on one process and under DDP this is what Accelerate would run."""
    check_accelerator(accelerator, optimizer)
    return find_alice(optimizer).step(closure)


def micro_batch_closure(
    accelerator: Any,
    compute_loss: Callable[[Any], torch.Tensor],
    batches: Iterable[Any],
    optimizer: Any = None,
    max_grad_norm: float | None = None,
) -> Callable[[], torch.Tensor]:
    """A closure for :func:`alice_step` over one or several micro-batches: for each,
    ``compute_loss(batch) / len(batches)`` goes through ``accelerator.backward``
    (gradients accumulate), and the closure returns the mean loss, detached.

    With ``max_grad_norm`` (and ``optimizer``), the gradients of every evaluation of
    the step are scaled by the clipping factor of its first evaluation
    (:class:`~alice.integrations.ConsistentClip`); ``closure.clip.center_norm`` is
    then the norm at ``nu`` before clipping."""
    batches = list(batches)
    if not batches:
        raise ValueError("micro_batch_closure needs at least one micro-batch")
    if max_grad_norm is not None and optimizer is None:
        raise ValueError("micro_batch_closure(max_grad_norm=...) needs optimizer= (to know the evaluation)")
    clip = ConsistentClip(max_grad_norm) if max_grad_norm else None

    def closure() -> torch.Tensor:
        total = None
        for batch in batches:
            loss = compute_loss(batch) / len(batches)
            accelerator.backward(loss)
            total = loss.detach() if total is None else total + loss.detach()
        if clip is not None:
            clip(optimizer)
        return total

    closure.clip = clip  # type: ignore[attr-defined]
    return closure
