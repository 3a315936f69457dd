r"""The elementwise formulas of the Alice update, as pure functions.

Every function here takes tensors (or anything that behaves like one under
torch's operators and ``torch.where``/``torch.sqrt``, such as the
:class:`alice._foreach.TensorList` of the multi-tensor path) and scalars or
0-d tensors, and returns new values. None of them knows about parameters,
state dicts or closures.

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

The move minimises, per element, the expected-loss model

.. math::

    m(t) = -|g|\,t + \tfrac{1}{2} h\,t^2 + c \sqrt{\rho}\, t^{3/2},
    \qquad c = \sqrt{2 / (3\pi)},

over :math:`t \ge 0`; with :math:`\alpha = \frac{3}{4\pi}\,\rho / (|g| + \epsilon)`
the minimiser is :math:`t^* = |g| / (\alpha + h + \sqrt{\alpha(\alpha + 2h)})`
(``eps`` added to the denominator as a guard). The step is then bounded,
signed against ``g``, and taken from the centre :math:`\mu`:
:math:`\nu = \mu + \omega\,s`, :math:`\mu = \mu + \phi\,s`.
"""

from __future__ import annotations

import math

import torch

from .schedule import effective_beta

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


def signed_step(G, V, H, R, *, eps, tau1, tau2, hess_comp, grad_glass, limit_method):
    """The bounded step, signed to descend along ``-G``."""
    g_abs = G.abs()
    rho = R if grad_glass else 0.0
    step = optimal_step(g_abs, rho, curvature(H, hess_comp), eps)
    scale = step_scale(g_abs, V, eps, limit_method)
    step = bound(step, tau1 * scale, tau2 * scale)
    return torch.where(G > 0, -step, step)


def evaluation_point(mu, offset, scale, signs):
    """Where the next gradient is taken: ``nu + scale * z`` with ``nu = mu + offset``
    (``signs`` is ``z``, or ``None`` for the point ``nu`` itself)."""
    nu = mu + offset
    return nu if signs is None else nu + scale * signs


def recentre(mu, held):
    """The float32 centre of half-precision parameters after an edit: ``mu`` where the
    parameter still holds its rounding, else the parameter's new value."""
    return torch.where(held == mu.to(held.dtype), mu, held.to(mu.dtype))


def samples_finite(g0, gp, gm, *, sigma, w2, hess_comp):
    """Whether every sample the step would average is finite (a 0-d bool tensor).

    Covers non-finite gradients and finite ones whose square or curvature sample
    overflows (a float32 gradient of 1e30): the spec skips such steps. Given finite
    samples, the averages and the move stay finite.
    """
    g0 = g0.to(state_dtype(g0.dtype))
    ok = torch.isfinite(g0 * g0).all()
    if gp is not None:
        gp, gm = gp.to(g0.dtype), gm.to(g0.dtype)
        ok = ok & torch.isfinite(hessian_sample(gp, gm, sigma, w2, hess_comp)).all()
        ok = ok & torch.isfinite(glass_sample(gp, gm, g0, sigma)).all()
    return ok


def update_(
    mu, offset, G, V, H, R, g0, gp, gm, out, *, n, ok, move, check,
    sigma, beta1, beta2, beta3, eps, w1, w2, phi, omega, tau1, tau2, hess_comp, grad_glass, limit_method,
    decay=0.0,
):
    """One Alice step on elementwise operands, written in place and only where ``ok``.

    ``mu`` is the centre and ``offset = nu - mu`` (state dtype); ``G, V, H, R`` the
    averages; ``g0`` the gradient at ``nu`` and ``gp, gm`` those at ``nu +- sigma z``
    (``None`` on a quick step), in any floating dtype. ``n`` is the number of
    steps these elements took part in before this one and ``ok`` whether the step
    is taken (both 0-d tensors, so the decision never leaves the device). With
    ``move`` the centre and the look-ahead move by the bounded step, else (warm-up)
    they stay; a move first shrinks the centre by the decoupled weight decay,
    ``mu - decay * mu`` (``decay = lr * weight_decay``; skipped when it is the number 0,
    so trajectories without decay are bit-for-bit unchanged). ``out`` (or ``None``) receives the new centre in the parameters'
    dtype. With ``check``, ``ok`` is first narrowed by :func:`samples_finite` of these
    gradients (one compiled graph then decides and writes). Returns the ``ok`` used.
    """
    if check:
        ok = ok & samples_finite(g0, gp, gm, sigma=sigma, w2=w2, hess_comp=hess_comp)
    n = n + 1
    keep = lambda new, old: torch.where(ok, new, old)  # noqa: E731
    dtype = G.dtype
    g0 = g0.to(dtype)
    if gp is not None:
        gp, gm = gp.to(dtype), gm.to(dtype)
        b3 = effective_beta(beta3, n)
        H.copy_(keep(average(H, hessian_sample(gp, gm, sigma, w2, hess_comp), b3), H))
        R.copy_(keep(average(R, glass_sample(gp, gm, g0, sigma), b3), R))
    nu = mu + offset
    V.copy_(keep(average(V, g0 * g0, effective_beta(beta2, n)), V))
    G.copy_(keep(average(G, regularized_grad(g0, nu, w1, w2), effective_beta(beta1, n)), G))
    if move:
        step = signed_step(
            G, V, H, R, eps=eps, tau1=tau1, tau2=tau2, hess_comp=hess_comp,
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
