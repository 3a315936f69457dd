r"""Live statistics of an Alice optimizer, read from its state.

Nothing is recorded during training: after ``step()`` returns, the averages
``G, V, H, R`` in ``opt.state[p]`` are exactly those the last move used, and the
group's hyperparameters give the step's scalars
(:func:`alice.schedule.step_scalars`). :func:`diagnostics` recomputes the last
step from them with the formulas of :mod:`alice._math` (vectorised over each
parameter's state, reduced on its device) and brings every number to the host
in one transfer at the end. Calling it is the only place that waits for the
device; not calling it costs nothing.

Per element, with the step's own settings (``docs/alice-update.md``):

.. math::

    g = |G|, \quad h = 0,\ H \text{ or } \sqrt H \ (\texttt{hess\_comp}), \quad
    \rho = R \text{ if grad\_glass else } 0, \\
    t = \texttt{optimal\_step}(g, \rho, h, \epsilon) = g / h_{opt}, \quad
    h_{opt} = \alpha + h + \sqrt{\alpha(\alpha + 2h)} + \epsilon, \quad
    \alpha = \tfrac{3}{4\pi}\,\rho / (g + \epsilon), \\
    [\ell, u] = [\tau_1, \tau_2] \cdot \texttt{step\_scale}(g, V),
    \quad t_b = \texttt{bound}(t, \ell, u).

See :data:`KEYS` for what each returned key means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import _math
from ..schedule import step_scalars

__all__ = ["KEYS", "PER_PARAM_KEYS", "diagnostics", "param_names", "sampling_calls"]

KEYS: dict[str, str] = {
    "rho_mean": "mean over elements of the glass density R (whether or not the step uses it)",
    "h_mean": "mean over elements of the Hessian estimate: H, or sqrt(H) when hess_comp='rms' "
              "(for hess_comp='zero', the |h| estimate H that Alice still keeps)",
    "g_abs_mean": "mean over elements of |G|, the averaged gradient",
    "g_zero_fraction": "share of elements with G == 0 exactly (no step: dead units, unused "
                       "parameters); they are left out of the four keys below",
    "glass_fraction": "mean over elements with G != 0 of (hopt - h - eps) / hopt: the share of the "
                      "optimal curvature hopt that the glass term makes, with h and rho as the step "
                      "uses them (0 on a smooth loss, -> 1 where kinks dominate)",
    "glass_fraction_weighted": "the same share averaged with weights |G| t_b, each element's part of the "
                               "linear decrease its bounded step promises (elements that barely move count little)",
    "clip_low": "share of elements with G != 0 whose step was raised to the lower bound: t < lower and t < upper",
    "clip_high": "share of elements with G != 0 whose step was set to the upper bound: not t < upper",
    "step_ratio_adam": "mean over elements with G != 0 of |Alice step| / |Adam-style step| = "
                       "t_b / (lr * |G| / (sqrt(V) + eps)) (in [lr_min, lr_max] / lr0 under "
                       "limit_method='adam')",
    "steps": "steps taken (calls of step() that advanced the schedule, less the skipped ones)",
    "skipped_steps": "steps skipped for a non-finite loss or gradient, or an overflow",
    "sampling_steps": "calls of step() that evaluated three gradients (warm-up included; a skipped "
                      "sampling step counts)",
    "calls": "calls of step() that advanced the schedule (steps + skipped_steps)",
}
"""Every key of :func:`diagnostics` and its definition (the docs repeat these with formulas)."""

PER_PARAM_KEYS = ("rho_mean", "h_mean", "g_abs_mean", "g_zero_fraction",
                  "glass_fraction", "glass_fraction_weighted", "clip_low", "clip_high", "step_ratio_adam")
"""The keys reported per tensor, as ``"<name>/<key>"``, with ``per_param=True``."""

# Positions in each tensor's vector of device sums (one row per tensor, stacked once).
_NUMEL, _RHO, _H, _G, _MOVING, _GLASS, _LOW, _HIGH, _RATIO, _WGLASS, _WEIGHT = range(11)


def param_names(opt, names=None) -> list[list[str]]:
    """The name of every parameter, group by group.

    Precedence: ``names`` (a mapping name -> parameter, or pairs ``(name, param)``
    such as ``model.named_parameters()``), then the ``"param_names"`` that torch
    (>= 2.6) stores in each group when the optimizer was built from
    ``model.named_parameters()``, then ``"<group>.<index>"``.
    """
    given: dict[int, str] = {}
    if names is not None:
        pairs = names.items() if isinstance(names, Mapping) else names
        try:
            for name, p in pairs:
                given[id(p)] = str(name)
        except (TypeError, ValueError):
            raise ValueError(
                f"Invalid names: {names!r} (must map names to parameters, or be (name, parameter) pairs "
                "such as model.named_parameters())"
            ) from None
    result = []
    for g, group in enumerate(opt.param_groups):
        stored = group.get("param_names")
        row = []
        for i, p in enumerate(group["params"]):
            if id(p) in given:
                row.append(given[id(p)])
            elif stored is not None and i < len(stored):
                row.append(str(stored[i]))
            else:
                row.append(f"{g}.{i}")
        result.append(row)
    return result


def sampling_calls(calls: int, warmup: int, quick_steps: int) -> int:
    """How many of calls ``1 .. calls`` were sampling steps under
    :func:`alice.schedule.is_sampling_step`: all warm-up calls, then every
    ``quick_steps + 1``-th (closed form, so reading it is O(1))."""
    period = quick_steps + 1
    first = min(calls, warmup)
    return first + max(0, calls // period - first // period)


def _sums(entry: dict[str, Tensor], sc) -> Tensor:
    """The eleven sums of one tensor's state, as a float64 vector on its device."""
    G, V, H, R = entry["G"], entry["V"], entry["H"], entry["R"]
    g_abs = G.abs()
    h_est = _math.curvature(H, "rms" if sc.hess_comp == "rms" else "abs")
    h = 0.0 if sc.hess_comp == "zero" else h_est
    rho = R if sc.grad_glass else 0.0
    t = _math.optimal_step(g_abs, rho, h, sc.eps)
    scale = _math.step_scale(g_abs, V, sc.eps, sc.limit_method)
    lower, upper = sc.tau1 * scale, sc.tau2 * scale
    moving = g_abs > 0
    below_upper = t < upper
    # h / hopt = h t / |G| (hopt = |G| / t where G != 0), so the glass share needs no new formula
    share = torch.where(moving, 1 - (h + sc.eps) * t / torch.where(moving, g_abs, 1), 0).clamp_(0, 1)
    adam = _math.step_scale(g_abs, V, sc.eps, "adam")
    bounded = _math.bound(t, lower, upper)
    ratio = torch.where(moving, bounded / torch.where(moving, adam, 1), 0)
    weight = g_abs * bounded
    sums = [
        torch.tensor(float(G.numel()), dtype=torch.float64, device=G.device),
        R.sum(dtype=torch.float64),
        h_est.sum(dtype=torch.float64),
        g_abs.sum(dtype=torch.float64),
        moving.sum(),
        share.sum(dtype=torch.float64),
        (moving & below_upper & (t < lower)).sum(),
        (moving & ~below_upper).sum(),
        ratio.sum(dtype=torch.float64),
        (share * weight).sum(dtype=torch.float64),
        weight.sum(dtype=torch.float64),
    ]
    return torch.stack([s.to(torch.float64) for s in sums])


def _means(rows: list[list[float]], sigmas: list[float]) -> dict[str, float]:
    """The per-element means of :data:`PER_PARAM_KEYS` from summed rows."""
    total = [sum(r[k] for r in rows) for k in range(11)]
    with_lr = [(r, s) for r, s in zip(rows, sigmas) if s > 0]
    ratio_count = sum(r[_MOVING] for r, _ in with_lr)
    ratio_sum = sum(r[_RATIO] / s for r, s in with_lr)
    div = lambda a, b: a / b if b > 0 else math.nan  # noqa: E731
    return {
        "rho_mean": div(total[_RHO], total[_NUMEL]),
        "h_mean": div(total[_H], total[_NUMEL]),
        "g_abs_mean": div(total[_G], total[_NUMEL]),
        "g_zero_fraction": div(total[_NUMEL] - total[_MOVING], total[_NUMEL]),
        "glass_fraction": div(total[_GLASS], total[_MOVING]),
        "glass_fraction_weighted": div(total[_WGLASS], total[_WEIGHT]),
        "clip_low": div(total[_LOW], total[_MOVING]),
        "clip_high": div(total[_HIGH], total[_MOVING]),
        "step_ratio_adam": div(ratio_sum, ratio_count),
    }


@torch.no_grad()
def diagnostics(opt, per_param: bool = False, names: Iterable[tuple[str, Any]] | Mapping | None = None) -> dict[str, float]:
    """Statistics of ``opt``'s last step, as a flat dict of Python floats.

    ``opt`` is an :class:`alice.Alice`. The overall keys (:data:`KEYS`) average over
    every element of every trainable parameter that has state; with ``per_param``
    each tensor adds ``"<name>/<key>"`` for the keys of :data:`PER_PARAM_KEYS`,
    named as :func:`param_names` says (``model.named_parameters()`` names, else
    ``"<group>.<index>"``). A mean over no elements is ``nan``.

    Definitions (``t``: the curvature model's step, ``t_b`` the bounded one; ``h``,
    ``rho``, bounds as the step uses them, see the module docstring):

    * ``rho_mean`` = mean(R); ``h_mean`` = mean(H) (mean(sqrt H) for "rms");
      ``g_abs_mean`` = mean(|G|); ``g_zero_fraction`` = share of G == 0;
    * ``glass_fraction`` = mean over G != 0 of (hopt - h - eps) / hopt;
      ``glass_fraction_weighted``: the same with weights |G| t_b;
    * ``clip_low`` = share of G != 0 with t < lower and t < upper;
      ``clip_high`` = share of G != 0 with not t < upper;
    * ``step_ratio_adam`` = mean over G != 0 of t_b / (lr |G| / (sqrt V + eps));
    * ``steps``, ``skipped_steps``, ``sampling_steps``, ``calls``: counters.

    The statistics use the group's hyperparameters as they are now: read them
    after ``step()`` and before a scheduler changes the lr, to describe exactly
    the step just taken. Cost: one vectorised pass over each tensor's state and
    one device-to-host transfer.
    """
    if not hasattr(opt, "quick_steps") or not hasattr(opt, "param_groups"):
        raise ValueError(f"Invalid opt: {type(opt).__name__} (must be an alice.Alice optimizer)")
    labels = param_names(opt, names)
    rows, sigmas, tensor_names = [], [], []
    for group, group_names in zip(opt.param_groups, labels):
        sc = step_scalars(group, opt.quick_steps)
        for p, name in zip(group["params"], group_names):
            entry = opt.state.get(p)
            if not p.requires_grad or not entry or "G" not in entry:
                continue
            rows.append(_sums(entry, sc))
            sigmas.append(sc.sigma)
            tensor_names.append(name)
    calls, skipped = opt.calls, None
    if rows:
        device = rows[0].device
        host = torch.stack([r.to(device, non_blocking=True) for r in rows]).tolist()  # the one sync
    else:
        host = []
    skipped = opt.skipped_steps  # already on the host after the transfer above
    out = _means(host, sigmas)
    out.update(
        steps=float(calls - skipped), skipped_steps=float(skipped), calls=float(calls),
        sampling_steps=float(sampling_calls(calls, opt.warmup_steps, opt.quick_steps)),
    )
    if per_param:
        for name, row, sigma in zip(tensor_names, host, sigmas):
            for key, value in _means([row], [sigma]).items():
                out[f"{name}/{key}"] = value
    return out
