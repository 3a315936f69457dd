r"""The elementwise formulas of the Alice update, as pure functions.

Every function here takes tensors (flat 1-D runs of the state, or any tensors
of one shape) and scalars or 0-d tensors, and returns new values; only
:func:`update_` writes, in place, into the :class:`Elements` it is given. None
of them knows about parameters, state dicts or closures.

Symbols (arXiv 2411.16914; ``docs/alice-update.md``):

.. math::

    \sigma &= \text{lr} \quad\text{(perturbation length)}, \qquad
        z \in \{-1, +1\}^d \text{ Rademacher}, \\
    g_\pm &= \nabla L(\nu \pm \sigma z), \qquad g_0 = \nabla L(\nu), \\
    h &= \frac{g_+ - g_-}{2\sigma} \quad\text{(Hessian magnitude: } |h| + w_2
        \text{ or } h^2 + w_2^2 \text{ averaged into } H), \\
    \rho &= \frac{2}{\sigma}\Big(\frac{g_+ + g_-}{2} - g_0\Big)^2
        \quad\text{(glass density, averaged into } R), \\
    A &\leftarrow x + b\,(A - x) \quad\text{(averaging rule)}.

The move minimises, per element, the expected-loss model :math:`m(t)` of
``docs/alice-update.md`` ("The move"; written out only there): :func:`optimal_step`
is its minimiser, bounded by :func:`step_length`, signed against ``G`` by
:func:`signed_step` and taken from the centre by :func:`update_`.

A new curvature term is a new field of :class:`Elements` (its average, kept by
``alice.state`` and checkpointed under the field's name) and a new formula here:
see ``docs/architecture.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._rademacher import noise_words
from ._scalars import effective_beta


class Elements(NamedTuple):
    """The per-element state one update reads and writes, named by the spec's symbols
    (1-D tensors of one length, in the state dtype)."""

    mu: Tensor  # the centre
    offset: Tensor  # nu - mu: the look-ahead's offset from the centre
    G: Tensor  # average of the (regularised) gradient
    V: Tensor  # average of its square
    H: Tensor  # average of the Hessian-magnitude sample
    R: Tensor  # average of the glass-density sample

    def cut(self, a: int, b: int) -> Elements:
        """Elements ``a .. b - 1`` of every field."""
        return Elements(*(t[a:b] for t in self))


class Gradients(NamedTuple):
    """The gradients of one step: at ``nu`` and, on a sampling step, at ``nu +- sigma z``
    (``None`` on a quick step). Any floating dtype (the parameters')."""

    g0: Tensor
    gp: Tensor | None = None
    gm: Tensor | None = None

    def cut(self, a: int, b: int) -> Gradients:
        return Gradients(*(None if t is None else t[a:b] for t in self))


STATE_KEYS = Elements._fields[1:]
"""The per-element state kept for every parameter (the centre ``mu`` is the parameter
itself, kept apart only for half-precision parameters)."""
AVERAGES = STATE_KEYS[1:]

GLASS = 3.0 / (4.0 * math.pi)
"""Constant of the glass term in the optimal step: alpha = GLASS * rho / |g|."""


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype Alice computes and keeps state in: float32 for half-precision parameters."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def average(avg, x, beta):
    """The spec's averaging rule ``A = x + beta * (A - x)`` (returns the new A)."""
    return x + beta * (avg - x)


def hessian_sample(gp, gm, sigma, w2, hess_comp: str):
    """One sample of the Hessian magnitude from the gradients at ``nu +- sigma z``.

    ``h = (gp - gm) / (2 sigma)``; returns ``h*h + w2*w2`` for "rms" (H then
    averages the square) and ``|h| + w2`` otherwise.
    """
    h = (gp - gm) / (2 * sigma)
    if hess_comp == "rms":
        return h * h + w2 * w2
    return h.abs() + w2


def glass_sample(gp, gm, g0, sigma):
    """One sample of the glass density ``rho = 2 (gbar - g0)^2 / sigma``,
    ``gbar = (gp + gm) / 2``: how far the mean gradient around ``nu`` is from
    the gradient at ``nu``, which no smooth Hessian explains."""
    jump = (gp + gm) / 2 - g0
    return 2 * (jump * jump) / sigma


def regularized_grad(g0, nu, w1, w2):
    """``g0 + w1 * s + w2 * nu`` with ``s = -1`` where ``nu < 0`` else ``+1``."""
    if w1 != 0:  # (not where(nu < 0, -w1, w1): two scalars would make a float32 tensor)
        g0 = torch.where(nu < 0, g0 - w1, g0 + w1)
    if w2 != 0:
        g0 = g0 + w2 * nu
    return g0


def curvature(H, hess_comp: str):
    """The Hessian term ``h`` of the step: 0, ``H`` or ``sqrt(H)``."""
    if hess_comp == "zero":
        return 0.0
    if hess_comp == "rms":
        return torch.sqrt(H)
    return H


def optimal_step(g_abs, rho, h, eps):
    """Minimiser of ``-|g| t + h t^2/2 + c sqrt(rho) t^1.5`` over ``t >= 0``."""
    alpha = GLASS * rho / (g_abs + eps)
    hopt = alpha + h + torch.sqrt(alpha * (alpha + 2 * h)) + eps
    return g_abs / hopt


def step_scale(g_abs, V, eps, limit_method: str):
    """Unit of the bounds: 1 ("fixed"), ``|g|`` ("sgdm"), ``|g| / (sqrt(V) + eps)`` ("adam")."""
    if limit_method == "fixed":
        return 1.0
    if limit_method == "sgdm":
        return g_abs
    return g_abs / (torch.sqrt(V) + eps)


def bound(step, lower, upper):
    """Raise ``step`` to ``lower`` where below it; set it to ``upper`` where it is
    not below it (so NaN, which ``clamp_min`` keeps, becomes ``upper``)."""
    return torch.where(step < upper, torch.clamp_min(step, lower), upper)


def step_length(G, V, H, R, *, eps, tau1, tau2, hess_comp, grad_glass, limit_method):
    """``(t, lower, upper)``: the expected-loss model's step length ``t`` (unbounded) and
    its bounds ``[tau1, tau2]`` times the limit method's unit."""
    g_abs = G.abs()
    t = optimal_step(g_abs, R if grad_glass else 0.0, curvature(H, hess_comp), eps)
    scale = step_scale(g_abs, V, eps, limit_method)
    return t, tau1 * scale, tau2 * scale


def signed_step(G, V, H, R, **scalars):
    """The bounded step, signed to descend along ``-G`` (``scalars`` as :func:`step_length`)."""
    step = bound(*step_length(G, V, H, R, **scalars))
    return torch.where(G > 0, -step, step)


def evaluation_point(mu, offset, scale, signs):
    """Where the next gradient is taken: ``nu + scale * z`` with ``nu = mu + offset``
    (``signs`` is ``z``, or ``None`` for the point ``nu`` itself)."""
    nu = mu + offset
    return nu if signs is None else nu + scale * signs


def vanishing_perturbation(sigma, mu, dtype):
    """1.0 where ``mu +- sigma`` rounds back to ``mu`` in ``dtype`` (``sigma`` below half
    the spacing of ``dtype``'s values around ``mu``), else 0.0."""
    exponent = torch.frexp(mu).exponent
    spacing = torch.where(mu == 0, 0.0, torch.ldexp(torch.ones_like(mu), exponent - 1)) * torch.finfo(dtype).eps
    return (sigma < spacing / 2).float()


ROUNDED = torch.bfloat16
"""The one narrower dtype the averages may be kept in (``averages_dtype``): float32's
exponent range, so ``V = g^2`` neither overflows nor underflows where float32 does not."""


def rounded(x, dtype, noise):
    """``x`` (float32) in ``dtype``: unchanged when ``dtype`` is float32's, else
    (bfloat16) rounded stochastically: up in magnitude with probability equal to the
    fraction of a bfloat16 spacing that truncation drops, so the rounding is unbiased
    and a small change of an average (``1 - beta2`` of it) is kept on average rather
    than rounded away. ``noise``: uniform integers in [0, 2**16), one per element."""
    if dtype == x.dtype:
        return x
    bits = x.view(torch.int32) + noise.to(torch.int32)
    return (bits & -(1 << 16)).view(torch.float32).to(dtype)


def rounding_noise(numel, base, key, device):
    """Four streams of 16-bit noise (``G, V, H, R``) for elements ``base ..
    base + numel - 1`` of step key ``key`` (ints, or 0-d int tensors inside a kernel)."""
    index = torch.arange(numel, dtype=torch.int64, device=device) + base
    first, second = noise_words(index & 0xFFFFFFFF, key)
    return first & 0xFFFF, first >> 16, second & 0xFFFF, second >> 16


def recentre(mu, centre):
    """The float32 centre of half-precision parameters after an edit: ``mu`` where the
    parameter still holds its rounding, else the parameter's new value."""
    return torch.where(centre == mu.to(centre.dtype), mu, centre.to(mu.dtype))


def samples_finite(grads: Gradients, *, sigma, w2, hess_comp):
    """Whether every sample the step would average is finite (a 0-d bool tensor).

    Covers non-finite gradients and finite ones whose square or curvature sample
    overflows (a float32 gradient of 1e30): the spec skips such steps. Given finite
    samples, the averages and the move stay finite.
    """
    g0, gp, gm = grads
    g0 = g0.to(state_dtype(g0.dtype))
    ok = torch.isfinite(g0 * g0).all()
    if gp is not None:
        gp, gm = gp.to(g0.dtype), gm.to(g0.dtype)
        ok = ok & torch.isfinite(hessian_sample(gp, gm, sigma, w2, hess_comp)).all()
        ok = ok & torch.isfinite(glass_sample(gp, gm, g0, sigma)).all()
    return ok


def update_(
    state: Elements, grads: Gradients, out, *, n, ok, move, check,
    sigma, beta1, beta2, beta3, eps, w1, w2, phi, omega, tau1, tau2, hess_comp, grad_glass, limit_method,
    decay=0.0, rounding=None,
):
    """One Alice step on elementwise operands, written in place into ``state`` and only
    where ``ok``.

    ``grads`` are the gradients at ``nu`` (and at ``nu +- sigma z`` on a sampling step).
    ``n`` is the number of steps these elements took part in before this one and ``ok``
    whether the step is taken (both 0-d tensors, so the decision never leaves the
    device). With ``move`` the centre and the look-ahead move by the bounded step, else
    (warm-up) they stay; a move first shrinks the centre by the decoupled weight decay,
    ``mu - decay * mu`` (``decay = lr * weight_decay``; skipped when it is the number 0,
    so trajectories without decay are bit-for-bit unchanged). ``out`` (or ``None``)
    receives the new centre in the parameters' dtype. With ``check``, ``ok`` is first
    narrowed by :func:`samples_finite` of these gradients (one compiled graph then
    decides and writes). ``rounding`` is ``(base, key)`` where the averages are kept
    in bfloat16 (:func:`rounded`; ``base`` the first element's index), else None.
    Returns the ``ok`` used.
    """
    if check:
        ok = ok & samples_finite(grads, sigma=sigma, w2=w2, hess_comp=hess_comp)
    mu, offset, G, V, H, R = state
    n = n + 1
    keep = lambda new, old: torch.where(ok, new, old)  # noqa: E731
    dtype = offset.dtype  # the averages are computed in it, whatever dtype they are kept in
    kept = dict(zip(AVERAGES, (G, V, H, R)))
    noise = {} if rounding is None else dict(zip(AVERAGES, rounding_noise(G.numel(), *rounding, G.device)))
    averages = {key: A.to(dtype) for key, A in kept.items()}

    def store(key, new):
        kept[key].copy_(rounded(keep(new, averages[key]), kept[key].dtype, noise.get(key)))
        averages[key] = kept[key].to(dtype)  # the move reads what is kept, so a resumed step reads the same

    g0, gp, gm = grads
    g0 = g0.to(dtype)
    if gp is not None:
        gp, gm = gp.to(dtype), gm.to(dtype)
        b3 = effective_beta(beta3, n)
        store("H", average(averages["H"], hessian_sample(gp, gm, sigma, w2, hess_comp), b3))
        store("R", average(averages["R"], glass_sample(gp, gm, g0, sigma), b3))
    nu = mu + offset
    store("V", average(averages["V"], g0 * g0, effective_beta(beta2, n)))
    store("G", average(averages["G"], regularized_grad(g0, nu, w1, w2), effective_beta(beta1, n)))
    if move:
        step = signed_step(
            *averages.values(), eps=eps, tau1=tau1, tau2=tau2, hess_comp=hess_comp,
            grad_glass=grad_glass, limit_method=limit_method,
        )
        centre = mu
        if not (isinstance(decay, (int, float)) and decay == 0):
            centre = mu - decay * mu  # decoupled weight decay, before the move
        new_mu = centre + phi * step
        offset.copy_(keep((centre + omega * step) - new_mu, offset))
        mu.copy_(keep(new_mu, mu))
    if out is not None:
        out.copy_(mu)
    return ok
