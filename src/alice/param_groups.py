"""Param groups for decoupled weight decay, the way AdamW users split a model."""

from __future__ import annotations

from torch import nn

__all__ = ["param_groups_for_weight_decay"]


def param_groups_for_weight_decay(
    model: nn.Module, weight_decay: float, *, no_decay: tuple[str, ...] = ()
) -> list[dict]:
    """Two param groups of ``model``'s trainable parameters: matrices and filters
    (``ndim >= 2``) with ``weight_decay``, and biases, norm weights and other
    vectors or scalars (``ndim <= 1``), plus any parameter whose name is in
    ``no_decay``, with ``weight_decay = 0`` (the split timm and most AdamW recipes
    use). Empty groups are left out.

        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
        >>> [(g["weight_decay"], len(g["params"])) for g in param_groups_for_weight_decay(model, 0.1)]
        [(0.1, 2), (0.0, 4)]
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float))
            or not 0 <= weight_decay < float("inf")):
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be a finite number >= 0)")
    names = dict(model.named_parameters())
    unknown = sorted(set(no_decay) - set(names))
    if unknown:
        raise ValueError(f"Invalid no_decay: {unknown!r} (not parameter names of the model)")
    decay, keep = [], []
    for name, p in names.items():
        if p.requires_grad:
            (keep if p.ndim <= 1 or name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
