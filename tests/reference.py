"""Test oracle for ``alice.Alice``, written from the spec only.

This is a deliberately slow and plain float64 transcription of
``docs/alice-update.md`` ("The Alice update: the exact
contract"). It shares no code with ``alice``: every rule of the spec is
one line of elementwise float64 tensor math below, in the spec's order.
It knows nothing of closures or models: ``step`` is handed a function that
returns the gradient at given points.
"""

import math

import torch


def _average(old, new, b):
    """'Average x into A with b': A = x + b * (A - x)."""
    return new + b * (old - new)


class ReferenceAlice:
    """Alice on a list of float64 tensors (one parameter group).

    ``step(grad_fn, signs_fn=None, lr=None)``:
      * ``grad_fn(points)`` gets a list of float64 tensors shaped like the
        parameters and returns the list of gradients there;
      * ``signs_fn(n)`` gets the step count and returns a list of +-1
        tensors shaped like the parameters (default: all +1);
      * ``lr`` replaces the learning rate from this step on (as a scheduler
        writing ``group["lr"]`` would).
    ``mu`` holds the parameters after each step; ``nu, G, V, H, R`` the state.
    """

    def __init__(self, x0, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, w1=0, w2=0,
                 phi=None, omega=1, limit_method="adam", lr_min=0, lr_max=None,
                 scale_bounds_with_lr=True, hess_comp="abs", grad_glass=True,
                 quick_steps=3, weight_decay=0):
        assert limit_method in ("fixed", "sgdm", "adam")
        assert hess_comp in ("zero", "abs", "rms")
        self.lr = self.lr0 = float(lr)
        self.beta1, self.beta2 = betas
        self.beta3 = 1 - (quick_steps + 1) * (1 - self.beta2)
        self.eps, self.w1, self.w2, self.omega = eps, w1, w2, omega
        self.phi = 1 - self.beta1 if phi is None else phi
        self.limit_method, self.hess_comp = limit_method, hess_comp
        self.grad_glass, self.quick_steps = grad_glass, quick_steps
        self.lr_min = lr_min
        self.weight_decay = weight_decay
        self.lr_max = 2 * self.lr0 if lr_max is None else lr_max
        self.scale_bounds_with_lr = scale_bounds_with_lr
        self.warmup = math.floor(1 / (1 - self.beta1) + 1e-9)
        self.n = 0
        self.mu = [x.detach().to(torch.float64).clone() for x in x0]
        self.nu = [m.clone() for m in self.mu]
        self.G, self.V, self.H, self.R = ([torch.zeros_like(m) for m in self.mu] for _ in range(4))

    def is_sampling(self, n):
        return n <= self.warmup or n % (self.quick_steps + 1) == 0

    def step(self, grad_fn, signs_fn=None, lr=None):
        if lr is not None:
            self.lr = float(lr)
        sigma = self.lr
        self.n += 1
        n = self.n
        b1, b2, b3 = (min(b, (n - 1) / n) for b in (self.beta1, self.beta2, self.beta3))

        if self.is_sampling(n):
            z = signs_fn(n) if signs_fn else [torch.ones_like(m) for m in self.nu]
            d = [sigma * zi for zi in z]
            gp = grad_fn([nu + di for nu, di in zip(self.nu, d)])
            gm = grad_fn([nu - di for nu, di in zip(self.nu, d)])
            g0 = grad_fn(self.nu)
            for i in range(len(self.nu)):
                h = (gp[i] - gm[i]) / (2 * sigma)
                hval = h * h + self.w2 * self.w2 if self.hess_comp == "rms" else h.abs() + self.w2
                self.H[i] = _average(self.H[i], hval, b3)
                gbar = (gp[i] + gm[i]) / 2
                rho = 2 * (gbar - g0[i]) ** 2 / sigma
                self.R[i] = _average(self.R[i], rho, b3)
        else:
            g0 = grad_fn(self.nu)

        for i in range(len(self.nu)):
            self.V[i] = _average(self.V[i], g0[i] * g0[i], b2)
            one = torch.ones_like(self.nu[i])
            s = torch.where(self.nu[i] < 0, -one, one)
            g = g0[i] + self.w1 * s + self.w2 * self.nu[i]
            self.G[i] = _average(self.G[i], g, b1)

        if n > self.warmup:
            for i in range(len(self.nu)):
                self._move(i)

    def _move(self, i):
        g = self.G[i]
        absg = g.abs()
        rho = self.R[i] if self.grad_glass else torch.zeros_like(g)
        h = {"zero": torch.zeros_like(g), "abs": self.H[i], "rms": self.H[i].sqrt()}[self.hess_comp]
        alpha = (3 / (4 * math.pi)) * rho / (absg + self.eps)
        hopt = alpha + h + torch.sqrt(alpha * (alpha + 2 * h)) + self.eps
        step = absg / hopt

        if self.scale_bounds_with_lr:
            tau1 = self.lr * self.lr_min / self.lr0
            tau2 = self.lr * self.lr_max / self.lr0
        else:
            tau1, tau2 = self.lr_min, self.lr_max
        unit = {"fixed": torch.ones_like(g), "sgdm": absg,
                "adam": absg / (self.V[i].sqrt() + self.eps)}[self.limit_method]
        lower, upper = tau1 * unit, tau2 * unit
        step = torch.where(step < lower, lower, step)
        step = torch.where(step < upper, step, upper)  # NaN is not below: -> upper
        step = torch.where(g > 0, -step, step)

        mu = self.mu[i] - self.lr * self.weight_decay * self.mu[i]  # decoupled decay, before the move
        self.nu[i] = mu + self.omega * step
        self.mu[i] = mu + self.phi * step
