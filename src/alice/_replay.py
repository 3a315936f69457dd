"""Repeatable model evaluations within one sampling step.

A sampling step evaluates the closure three times on the same batch. Each
evaluation must see the same randomness (dropout masks), and the model's
buffers (BatchNorm running statistics) should change as in one ordinary
training step. ``Replay`` records the global RNG states and, when given a
model, its floating and integer buffers; ``rewind()`` puts them back before
the next evaluation, so the last evaluation (at ``nu``) leaves them exactly
where a single ordinary evaluation would.
"""

from __future__ import annotations

import torch


def _accelerator_modules():
    """Device modules (``torch.cuda``, ...) whose RNG has been initialised."""
    cuda = torch.cuda
    return [cuda] if cuda.is_available() and cuda.is_initialized() else []


class Replay:
    def __init__(self, model: torch.nn.Module | None = None):
        self.cpu_state = torch.get_rng_state()
        self.device_states = [
            (module, [module.get_rng_state(i) for i in range(module.device_count())])
            for module in _accelerator_modules()
        ]
        self.buffers = [] if model is None else [(b, b.clone()) for b in model.buffers()]

    def rewind(self, rng: bool = True) -> None:
        if rng:
            torch.set_rng_state(self.cpu_state)
            for module, states in self.device_states:
                for i, state in enumerate(states):
                    module.set_rng_state(state, i)
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
