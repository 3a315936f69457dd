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

GLASS = 3.0 / (4.0 * math.pi)
"""Constant of the glass term in the optimal step: alpha = GLASS * rho / |g|."""

HESS_COMPS = ("zero", "abs", "rms")
LIMIT_METHODS = ("fixed", "sgdm", "adam")


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
