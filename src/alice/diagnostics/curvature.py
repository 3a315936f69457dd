r"""A curvature instrument for any model and any optimizer.

:func:`curvature` samples, at the model's current parameters :math:`\theta`, the
same two curvature quantities Alice averages (``docs/alice-update.md``), with
the formulas of :mod:`alice._math` (one formula, one place):

.. math::

    g_0 = \nabla L(\theta), \quad g_\pm = \nabla L(\theta \pm \sigma z), \quad
    h = \texttt{hessian\_sample}(g_+, g_-, \sigma, 0, \text{"abs"}) = \Big|\frac{g_+ - g_-}{2\sigma}\Big|, \quad
    \rho = \texttt{glass\_sample}(g_+, g_-, g_0, \sigma),

with :math:`z` Rademacher signs (counter-based, as Alice draws them:
:mod:`alice._rademacher`), one draw per ``draws``. Along a direction
:math:`d` (default :math:`-\sigma\,\mathrm{sign}(g_0)`, an Adam-sized step of
length :math:`\sigma` per element) the expected-loss model predicts the change

.. math::

    \Delta L(t) \approx t\,D + t^2\,T_h + t^{3/2}\,T_g, \quad
    D = \sum g_0 d, \quad T_h = \sum \tfrac12 h d^2, \quad
    T_g = \sum c \sqrt{\rho}\,|d|^{3/2},

:math:`c` = :data:`alice.diagnostics.probe.GLASS_COEFFICIENT` :math:`=\sqrt{2/(3\pi)}`.
Each draw gives one value of :math:`T_h, T_g` and of the glass fraction
:math:`T_g / (T_h + T_g)`; the report gives their means over the draws with 95%
Student-t intervals, a verdict from those intervals, and how well the three
nested models predict the loss actually measured at :math:`\theta + t\,d`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _math, _rademacher
from .probe import GLASS_COEFFICIENT, MODELS

__all__ = ["FIT_LENGTHS", "MARGIN", "CurvatureReport", "curvature"]

FIT_LENGTHS = (0.25, 0.5, 1.0)
"""Multiples ``t`` of the direction at which the fit measures the loss."""

MARGIN = 0.05
"""A curvature term is negligible ("flat") below ``MARGIN * |D|``."""

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def _t975(df: int) -> float:
    """Two-sided 95% t quantile: scipy's when installed, else the table (the entry at or
    below ``df``, which errs wide), 1.96 beyond 120."""
    try:
        from ..harness.stats import t975

        return t975(df)
    except ImportError:
        if df > 120:
            return 1.960
        return _T975[max(k for k in _T975 if k <= df)]


def _interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean over draws and its 95% t-interval."""
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = _t975(n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def _fraction(th: float, tg: float) -> float:
    return tg / (th + tg) if th + tg != 0 else 0.0


def _verdict(th: tuple, tg: tuple, margin: float) -> str:
    """From the (mean, low, high) of T_h and T_g (both >= 0 by construction)."""
    if max(abs(th[1]), abs(th[2])) < margin and max(abs(tg[1]), abs(tg[2])) < margin:
        return "flat"
    if tg[1] > th[2]:
        return "glass"
    if th[1] > tg[2]:
        return "hessian"
    return "unclear"


def _summary(rows: list[list[float]], numel: int, linear: float) -> dict[str, Any]:
    """Means and intervals over draws of one group's per-draw (h_sum, rho_sum, T_h, T_g)."""
    h = _interval([r[0] / numel for r in rows])
    rho = _interval([r[1] / numel for r in rows])
    th = _interval([r[2] for r in rows])
    tg = _interval([r[3] for r in rows])
    gf = _interval([_fraction(r[2], r[3]) for r in rows])
    margin = MARGIN * abs(linear)
    out: dict[str, Any] = {"verdict": _verdict(th, tg, margin), "numel": numel, "linear": linear, "margin": margin}
    for key, (mean, low, high) in (("h_mean", h), ("rho_mean", rho), ("hess_term", th), ("glass_term", tg)):
        out[key], out[f"{key}_low"], out[f"{key}_high"] = mean, low, high
    # a fraction lies in [0, 1]; so does its interval
    out["glass_fraction"], out["glass_fraction_low"], out["glass_fraction_high"] = (
        gf[0], max(0.0, gf[1]), min(1.0, gf[2]))
    return out


@dataclass
class CurvatureReport:
    """What :func:`curvature` measured (see :meth:`to_dict` for the keys)."""

    sigma: float
    draws: int
    overall: dict[str, Any]
    lengths: list[float]
    measured: list[float]  # L(theta + t d) - L(theta) at each length
    predicted: dict[str, list[float]]
    fit: dict[str, dict[str, float]]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.overall["verdict"]

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and strings: the overall keys (``verdict``, ``h_mean``, ``rho_mean``,
        ``hess_term``, ``glass_term``, ``glass_fraction``, each with ``_low``/``_high``; ``linear``
        (D), ``margin``, ``numel``), ``draws``, ``sigma``, ``lengths``, ``measured``,
        ``fit`` (model -> ``error``, ``error_rel``, ``r2``) and ``layers`` (name -> the overall keys)."""
        out = {k: _plain(v) for k, v in self.overall.items()}
        out.update(draws=self.draws, sigma=self.sigma, lengths=list(self.lengths),
                   measured=[float(m) for m in self.measured],
                   fit={m: {k: float(v) for k, v in f.items()} for m, f in self.fit.items()},
                   layers={n: {k: _plain(v) for k, v in row.items()} for n, row in self.layers.items()})
        return out

    def table(self) -> str:
        head = (f"{'layer':<24}{'numel':>9}{'h_mean':>11}{'rho_mean':>11}{'H term':>11}{'G term':>11}"
                f"  {'glass fraction':<20}verdict")
        lines = [head, "-" * len(head)]
        for name, row in [("all", self.overall), *self.layers.items()]:
            gf = f"{row['glass_fraction']:.2f} [{row['glass_fraction_low']:.2f}, {row['glass_fraction_high']:.2f}]"
            lines.append(f"{name[:24]:<24}{row['numel']:>9}{row['h_mean']:>11.3g}{row['rho_mean']:>11.3g}"
                         f"{row['hess_term']:>11.3g}{row['glass_term']:>11.3g}  {gf:<20}{row['verdict']}")
        if self.fit:
            fit = ", ".join(f"{m} err {self.fit[m]['error']:.3g} R2 {self.fit[m]['r2']:.2f}" for m in MODELS)
            lines.append(f"fit at t={self.lengths}: {fit}")
        lines.append(f"sigma {self.sigma:g}, {self.draws} draws, D = {self.overall['linear']:.4g}, "
                     f"flat margin {self.overall['margin']:.3g} (= {MARGIN} |D|); terms with 95% t-intervals")
        return "\n".join(lines)

    __str__ = table


def _plain(v):
    return v if isinstance(v, str) else (int(v) if isinstance(v, int) else float(v))


def check_settings(draws, layers, fit) -> None:
    """ValueError naming the first invalid one of :func:`curvature`'s ``draws``, ``layers``, ``fit``."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"Invalid draws: {draws!r} (must be an integer >= 2, for the intervals)")
    if layers not in ("module", None):
        raise ValueError(f"Invalid layers: {layers!r} (must be 'module' or None)")
    if not isinstance(fit, bool):
        raise ValueError(f"Invalid fit: {fit!r} (must be True or False)")


def _as_batches(batches) -> list:
    """One batch (a tensor, tuple, mapping or non-iterable) or an iterable of batches (a list,
    a DataLoader, a generator), as a list."""
    if isinstance(batches, (Tensor, tuple, Mapping, str, bytes)) or not isinstance(batches, Iterable):
        return [batches]
    held = list(batches)
    if not held:
        raise ValueError(f"Invalid batches: {batches!r} (must hold at least one batch)")
    return held


def _module_names(model: torch.nn.Module, params: list[Tensor]) -> list[str]:
    """The name of the module that owns each parameter (the first, if shared; "(root)" for the model's own)."""
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), name or "(root)")
    return [owner.get(id(p), "(root)") for p in params]


def curvature(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], Tensor],
    batches,
    *,
    sigma: float,
    draws: int = 8,
    layers: str | None = "module",
    direction: list[Tensor] | None = None,
    generator: torch.Generator | None = None,
    fit: bool = True,
) -> CurvatureReport:
    """Sample the Hessian and glass curvature of ``model``'s loss at its current parameters.

    Works with any ``torch.nn.Module`` and any optimizer (none is needed).

    Args:
        model: the model; its trainable parameters (``requires_grad``) are probed.
        loss_fn: ``loss_fn(model, batch)`` returning a finite scalar tensor. The loss is the
            mean of it over ``batches``.
        batches: an iterable of batches (a list, DataLoader or generator; it is read once
            and kept), or one batch (a tensor, a tuple or a dict: wrap a batch that is a
            list as ``[batch]``).
        sigma: perturbation length (> 0), the ``lr`` of Alice's sampling.
        draws: Rademacher draws (>= 2, for the intervals).
        layers: ``"module"`` (a row per module owning parameters) or ``None`` (overall only).
        direction: tensors, one per trainable parameter in ``model.parameters()`` order, of
            the step to model; default ``-sigma * sign(g0)``.
        generator: a ``torch.Generator`` that gives the seed of the signs (one number per
            call; default: a CPU generator seeded 0; the global RNG is never used).
        fit: whether to measure the loss along the direction and fit the three models
            (``False`` saves ``len(FIT_LENGTHS)`` loss evaluations; the report's
            ``lengths``, ``measured``, ``predicted`` and ``fit`` are then empty).

    The model runs in ``eval()`` mode (deterministic gradients) and every module's
    mode is restored afterwards, as are the parameters (exactly) and their ``.grad``.
    Cost: ``2 * draws + 1`` gradient evaluations and, with ``fit``, ``len(FIT_LENGTHS)``
    loss evaluations, each over all batches.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
    if not callable(loss_fn):
        raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable as loss_fn(model, batch))")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"Invalid sigma: {sigma!r} (must be a positive finite number)")
    sigma = float(sigma)
    check_settings(draws, layers, fit)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Invalid generator: {generator!r} (must be a torch.Generator or None)")
    held = _as_batches(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Invalid model: it has no trainable parameters")
    if direction is not None:
        direction = _check_direction(direction, params)
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    saved = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    base = [s.to(_math.state_dtype(s.dtype)) for s in saved]

    def set_params(values):
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)

    def loss_at(b):
        value = loss_fn(model, b)
        if not isinstance(value, Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"Invalid loss_fn: it returned {shape} (must return a scalar tensor)")
        if not torch.isfinite(value.detach()):
            raise ValueError(f"Invalid loss_fn: it returned a non-finite loss ({value.item()})")
        return value

    def gradient():
        total = [torch.zeros_like(b) for b in base]
        value = 0.0
        for b in held:
            loss = loss_at(b)
            if not loss.requires_grad:
                raise ValueError("Invalid loss_fn: its loss does not depend on the model's trainable parameters")
            gs = torch.autograd.grad(loss / len(held), params, allow_unused=True)
            for acc, g in zip(total, gs):
                if g is not None:
                    acc.add_(g.to(acc.dtype))
            value += loss.detach().to(torch.float64).item()
        return total, value / len(held)

    def loss_only():
        with torch.no_grad():
            return math.fsum(loss_at(b).detach().to(torch.float64).item() for b in held) / len(held)

    names = _module_names(model, params) if layers == "module" else []
    units: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        units.setdefault(name, []).append(k)

    model.eval()
    try:
        g0, l0 = gradient()
        if direction is None:
            d = [-sigma * torch.sign(g) for g in g0]
        else:
            d = [x.detach().to(device=b.device, dtype=b.dtype) for x, b in zip(direction, base)]
        linear = torch.stack([(g * x).sum(dtype=torch.float64) for g, x in zip(g0, d)]).tolist()
        # per element, T_h = h * (d^2 / 2) and T_g = sqrt(rho) * (c |d|^1.5): the weights are fixed
        half_d2 = [0.5 * x * x for x in d]
        glass_d = [GLASS_COEFFICIENT * x.abs() * x.abs().sqrt() for x in d]
        # counter-based signs as Alice draws them (one seed from the generator per call)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        offsets = [0]
        for b in base:
            offsets.append(offsets[-1] + b.numel())
        per_draw = []  # per draw, per tensor: (sum h, sum rho, T_h, T_g)
        for k in range(draws):
            key = _rademacher.tensor_key(seed, k)
            z = [_rademacher.rademacher(key, b.numel(), offset=o, dtype=b.dtype, device=b.device).view(b.shape)
                 for b, o in zip(base, offsets)]
            set_params([torch.add(b, s, alpha=sigma) for b, s in zip(base, z)])
            gp, _ = gradient()
            set_params([torch.add(b, s, alpha=-sigma) for b, s in zip(base, z)])
            gm, _ = gradient()
            rows = []
            for a, b_, g, w_h, w_g in zip(gp, gm, g0, half_d2, glass_d):
                h = _math.hessian_sample(a, b_, sigma, 0.0, "abs")
                rho = _math.glass_sample(a, b_, g, sigma)
                rows.append(torch.stack([h.sum(dtype=torch.float64), rho.sum(dtype=torch.float64),
                                         (h * w_h).sum(dtype=torch.float64),
                                         (rho.sqrt_() * w_g).sum(dtype=torch.float64)]))
            per_draw.append(torch.stack(rows).cpu())
        lengths = list(FIT_LENGTHS) if fit else []
        measured = []
        for t in lengths:
            set_params([b + t * x for b, x in zip(base, d)])
            measured.append(loss_only() - l0)
    finally:
        set_params(saved)
        for p, g in zip(params, grads):
            p.grad = g
        for m, training in modes:
            m.training = training

    draws_t = torch.stack(per_draw)  # (draws, tensors, 4), float64
    numel = sum(p.numel() for p in params)
    overall = _summary(draws_t.sum(1).tolist(), numel, math.fsum(linear))
    layer_rows = {
        name: _summary(draws_t[:, ks].sum(1).tolist(), sum(params[k].numel() for k in ks),
                       math.fsum(linear[k] for k in ks))
        for name, ks in units.items()
    }
    D, th, tg = overall["linear"], overall["hess_term"], overall["glass_term"]
    predicted = {
        "linear": [t * D for t in lengths],
        "hessian": [t * D + t * t * th for t in lengths],
        "glass": [t * D + t * t * th + t ** 1.5 * tg for t in lengths],
    } if fit else {}
    fits = {m: _fit(measured, predicted[m], abs(D)) for m in MODELS} if fit else {}
    return CurvatureReport(sigma=sigma, draws=draws, overall=overall, lengths=lengths,
                           measured=measured, predicted=predicted, fit=fits, layers=layer_rows)


def _fit(measured: list[float], predicted: list[float], scale: float) -> dict[str, float]:
    misses = [m - p for m, p in zip(measured, predicted)]
    error = math.sqrt(math.fsum(e * e for e in misses) / len(misses))
    mean = math.fsum(measured) / len(measured)
    total = math.fsum((m - mean) ** 2 for m in measured)
    r2 = 1 - math.fsum(e * e for e in misses) / total if total > 0 else math.nan
    return {"error": error, "error_rel": error / scale if scale > 0 else math.nan, "r2": r2}


def _check_direction(direction, params: list[Tensor]) -> list[Tensor]:
    if isinstance(direction, Tensor) or not isinstance(direction, (list, tuple)):
        raise ValueError(f"Invalid direction: {type(direction).__name__} (must be a list of tensors, "
                         "one per trainable parameter)")
    if len(direction) != len(params):
        raise ValueError(f"Invalid direction: {len(direction)} tensors for {len(params)} trainable parameters")
    for i, (x, p) in enumerate(zip(direction, params)):
        if not isinstance(x, Tensor) or x.shape != p.shape:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Invalid direction: entry {i} is {shape}, the parameter is {tuple(p.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"Invalid direction: entry {i} is not finite")
    return list(direction)
