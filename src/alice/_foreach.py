"""A list of tensors that runs the formulas of ``_math`` with multi-tensor ops.

``TensorList`` maps Python's arithmetic operators and the few torch functions
``_math`` uses onto ``torch._foreach_*`` kernels, one launch per operation for
the whole list instead of one per tensor. That lets the multi-tensor path run
the very same formulas as the single-tensor and compiled paths. Functions with
no multi-tensor kernel (``torch.where``, comparisons) apply per tensor.
"""

from __future__ import annotations

import torch

_FOREACH = {
    torch.sqrt: torch._foreach_sqrt,
    torch.clamp_min: torch._foreach_clamp_min,
}


def _unwrap(x, n):
    return x.tensors if isinstance(x, TensorList) else [x] * n


class TensorList:
    """Tensors of one device and dtype, treated as one elementwise operand."""

    __slots__ = ("tensors",)

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def _binary(self, op, other):
        other = other.tensors if isinstance(other, TensorList) else other
        return TensorList(op(self.tensors, other))

    def __add__(self, other):
        return self._binary(torch._foreach_add, other)

    def __sub__(self, other):
        return self._binary(torch._foreach_sub, other)

    def __mul__(self, other):
        return self._binary(torch._foreach_mul, other)

    def __truediv__(self, other):
        return self._binary(torch._foreach_div, other)

    __radd__ = __add__
    __rmul__ = __mul__

    def __rtruediv__(self, other):  # a number over a list (e.g. rho = 0 without the glass term)
        return TensorList(torch._foreach_mul(torch._foreach_reciprocal(self.tensors), other))

    def __neg__(self):
        return TensorList(torch._foreach_neg(self.tensors))

    def __lt__(self, other):
        return TensorList(a < b for a, b in zip(self.tensors, _unwrap(other, len(self.tensors))))

    def __gt__(self, other):
        return TensorList(a > b for a, b in zip(self.tensors, _unwrap(other, len(self.tensors))))

    def abs(self):
        return TensorList(torch._foreach_abs(self.tensors))

    def copy_(self, other):
        torch._foreach_copy_(self.tensors, _unwrap(other, len(self.tensors)))
        return self

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FOREACH:
            return cls(_FOREACH[func](*(a.tensors if isinstance(a, cls) else a for a in args)))
        n = next(len(a.tensors) for a in args if isinstance(a, TensorList))
        columns = zip(*(_unwrap(a, n) for a in args))
        return cls(func(*column, **kwargs) for column in columns)
