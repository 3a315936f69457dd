"""Counter-based Rademacher signs.

The sign of the element with global index ``i`` at step ``n`` is a fixed
function of ``(seed, n, i)``: no generator state is kept or advanced, the
user's RNG streams are untouched, a shard computes exactly the signs of its
slice of the whole, and a GPU kernel can compute them in registers. The
global index of an element is its position in the optimizer's flat layout
(``alice.state``: the parameters of each flat buffer one after the other,
buffers in order).

Construction: ``key = mix(mix(mix(seed_lo) ^ seed_hi ^ n) ^ k)`` (host
integers; ``k = 0`` for the flat layout), then one 32-bit word
``mix(mix(j) ^ key)`` per 32 elements
(``j = i // 32``); bit ``i % 32`` set means ``z_i = -1``. ``mix`` is the
``lowbias32`` integer hash (C. Wellons, "Prospecting for hash functions",
2018), a bijection of 32-bit integers with strong avalanche. The same code
runs on Python ints and int64 tensors (values in [0, 2**32), products kept
below 2**49) and on int32 tensors (the same bits, wrapping multiplication),
the fast form for vectorised and GPU kernels.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF


def as_int32(c: int) -> int:
    """The int32 with the same 32 bits as ``c`` in [0, 2**32)."""
    return c - (1 << 32) if c >= 1 << 31 else c


def _mul32(x, c: int):
    """``x * c mod 2**32``."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.int32:
        return x * as_int32(c)  # wraps modulo 2**32
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK


def _shr32(x, s: int):
    """Logical right shift of 32-bit values (the mask undoes int32's sign fill)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def mix32(x):
    """lowbias32: a bijective hash of 32-bit values (ints, int64 or int32 tensors)."""
    x = x ^ _shr32(x, 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ _shr32(x, 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ _shr32(x, 16)


def tensor_key(seed: int, step: int, index: int = 0) -> int:
    """The 32-bit key of stream ``index`` at step ``step`` (all host ints)."""
    seed_mix = mix32(seed & _MASK) ^ ((seed >> 32) & _MASK)
    return mix32(mix32(seed_mix ^ (step & _MASK)) ^ (index & _MASK))


def signs_at(index, key):
    """Signs ``z_i`` (+1 or -1) at flat indices ``index`` (an int64 tensor, or int32
    with ``key`` as :func:`as_int32`), one hash per element: the form a fused
    kernel computes in registers."""
    words = mix32(mix32(index >> 5) ^ key)
    return 1 - 2 * ((words >> (index & 31)) & 1)


def noise_words(index, key):
    """Two 32-bit words per element (at flat indices ``index``, int32 or int64 tensors,
    ``key`` as for :func:`signs_at`): the random bits of stochastic rounding, from a
    stream the signs do not use (``index`` itself, not ``index >> 5``, is hashed)."""
    first = mix32(mix32(index) ^ key)
    return first, mix32(first ^ key)


def rademacher(key: int, numel: int, *, offset: int = 0, dtype=torch.float32, device=None):
    """Signs ``z_i`` (+1 or -1) for flat indices ``offset .. offset + numel - 1``.

    Equal to ``signs_at(arange(offset, offset + numel), key)``, but hashes once
    per 32 elements and expands the bits, which is far cheaper eagerly.
    """
    first, last = offset >> 5, (offset + numel + 31) >> 5
    j = torch.arange(first, last, dtype=torch.int64, device=device)
    words = mix32(mix32(j) ^ key)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    shifts = torch.arange(32, dtype=torch.int32, device=device)
    bits = ((words[:, None] >> shifts) & 1).flatten()[offset & 31 :][:numel]
    return bits.to(dtype).mul_(-2).add_(1)
