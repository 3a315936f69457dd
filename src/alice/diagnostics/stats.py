"""Live statistics of an Alice optimizer, read from its state.

Nothing is recorded during training: after ``step()`` returns, the averages
``G, V, H, R`` in ``opt.state[p]`` are exactly those the last move used, and the
group's hyperparameters give the step's scalars
(:func:`alice._scalars.step_scalars`). :func:`diagnostics` recomputes the last
step from them with the formulas of :mod:`alice._math` (vectorised over each
parameter's state, reduced on its device) and brings every number to the host
in one transfer at the end. Calling it is the only place that waits for the
device; not calling it costs nothing.

Per element, with the step's own settings: ``t, [lower, upper] =
_math.step_length(G, V, H, R, ...)`` (the expected-loss model's minimiser and its
bounds, ``docs/alice-update.md``, "The move"), ``t_b = _math.bound(t, lower, upper)``,
and ``h = _math.curvature(H, hess_comp)``, so that ``hopt = |G| / t`` and the glass
share of it is ``1 - (h + eps) / hopt``.

See :data:`KEYS` for what each returned key means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .. import _math, kernels
from .._scalars import sampling_calls, step_scalars
from ..functional import CPU_SLICE, use_fused

__all__ = ["KEYS", "PER_PARAM_KEYS", "diagnostics", "param_names"]

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

# Positions in each tensor's row of sums (one row per tensor; the host sees them once).
_NUMEL, _RHO, _H, _G, _MOVING, _GLASS, _LOW, _HIGH, _RATIO, _WGLASS, _WEIGHT = range(11)
_READ = ("G", "V", "H", "R")
"""The state the statistics read, in :func:`_quantities`' order."""
_GPU_SLICE = 1 << 22
"""Elsewhere in slices of this many: few launches, and float32 counts within a slice stay exact."""


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


def _quantities(G, V, H, R, *, tau1, tau2, eps, hess_comp, grad_glass, limit_method) -> list[Tensor]:
    """The ten per-element summands (positions ``_RHO .. _WEIGHT``) of one slice of state."""
    g_abs = G.abs()
    h_est = _math.curvature(H, "rms" if hess_comp == "rms" else "abs")
    h = _math.curvature(H, hess_comp)  # as the step uses it
    t, lower, upper = _math.step_length(G, V, H, R, eps=eps, tau1=tau1, tau2=tau2, hess_comp=hess_comp,
                                        grad_glass=grad_glass, limit_method=limit_method)
    adam = _math.step_scale(g_abs, V, eps, "adam")
    moving = g_abs > 0
    below_upper = t < upper
    bounded = _math.bound(t, lower, upper)
    safe = torch.where(moving, g_abs, 1)
    # h / hopt = h t / |G| where G != 0 (hopt = |G| / t), so the glass share needs no new formula
    share = torch.where(moving, 1 - (h + eps) * t / safe, 0).clamp(0, 1)
    weight = g_abs * bounded
    as_float = lambda mask: mask.to(G.dtype)  # noqa: E731
    return [
        R, h_est, g_abs, as_float(moving), share,
        as_float(moving & below_upper & (t < lower)), as_float(moving & ~below_upper),
        torch.where(moving, bounded / torch.where(moving, adam, 1), 0), share * weight, weight,
    ]


def _sums(G, V, H, R, **options) -> Tensor:
    """The ten sums of one slice as a float64 vector (what the compiled kernel computes)."""
    quantities = _quantities(G, V, H, R, **options)
    return torch.stack([q.sum(dtype=torch.float64) for q in quantities])


def _run_sums(views: list[dict[str, Tensor]], sc, per_param: bool, fused: bool | None) -> Tensor:
    """Sums of one run of tensors whose state lies back to back: a float64 tensor of
    ``(len(views), 11)`` rows with ``per_param``, else ``(1, 11)``, on their device
    (the element counts, column ``_NUMEL``, are known on the host and left 0 here)."""
    lengths = [v["G"].numel() for v in views]
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    total = starts[-1]
    first = views[0]
    flat = {k: first[k].as_strided((total,), (1,), first[k].storage_offset()) for k in _READ}
    device = first["G"].device
    rows = len(views) if per_param else 1
    acc = torch.zeros(rows, 11, dtype=torch.float64, device=device)  # column _NUMEL is filled on the host
    options = dict(tau1=sc.tau1, tau2=sc.tau2, eps=sc.eps, hess_comp=sc.hess_comp, grad_glass=sc.grad_glass,
                   limit_method=sc.limit_method)
    if use_fused(fused, total, device):  # one compiled pass per piece; the bounds as 0-d tensors
        options.update(tau1=torch.tensor(sc.tau1, dtype=torch.float64), tau2=torch.tensor(sc.tau2, dtype=torch.float64))
        pieces = list(zip(starts, starts[1:])) if per_param else [(0, total)]
        zero = torch.zeros(10, dtype=torch.float64, device=device)
        acc[:, 1:] = torch.stack([kernels.run(_sums, tuple(flat[k][a:b] for k in _READ), options) if b > a
                                  else zero for a, b in pieces])
        return acc
    step = CPU_SLICE if device.type == "cpu" else _GPU_SLICE
    for a in range(0, total, step):
        b = min(a + step, total)
        quantities = _quantities(*(flat[k][a:b] for k in _READ), **options)
        if per_param:
            inside = [i for i in range(len(views)) if starts[i] < b and starts[i + 1] > a or (
                lengths[i] == 0 and a <= starts[i] < b)]
            lens = torch.tensor([min(b, starts[i + 1]) - max(a, starts[i]) for i in inside], device=device)
            sums = torch.stack([torch.segment_reduce(q, "sum", lengths=lens) for q in quantities], dim=1)
            acc[inside[0]: inside[-1] + 1, 1:] += sums.to(torch.float64)
        else:
            acc[0, 1:] += torch.stack([q.sum() for q in quantities]).to(torch.float64)
    return acc


def _adjacent(prev: dict[str, Tensor], nxt: dict[str, Tensor]) -> bool:
    """Whether ``nxt``'s state continues ``prev``'s in the same flat buffers."""
    for k in _READ:
        a, b = prev[k], nxt[k]
        if (a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr() or a.dtype != b.dtype
                or not (a.is_contiguous() and b.is_contiguous())
                or b.storage_offset() != a.storage_offset() + a.numel()):
            return False
    return True


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
def diagnostics(
    opt, per_param: bool = False, names: Iterable[tuple[str, Any]] | Mapping | None = None
) -> dict[str, float]:
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
    runs: list[tuple[list[dict[str, Tensor]], Any, dict, list[str]]] = []  # (views, scalars, group, names)
    for group, group_names in zip(opt.param_groups, labels):
        sc = step_scalars(group, opt.quick_steps)
        previous = None
        for p, name in zip(group["params"], group_names):
            entry = opt.state.get(p)
            if not p.requires_grad or not entry or "G" not in entry:
                previous = None
                continue
            if previous is not None and _adjacent(previous, entry):
                runs[-1][0].append(entry)
                runs[-1][3].append(name)
            else:
                runs.append(([entry], sc, group, [name]))
            previous = entry
    sums = [_run_sums(views, sc, per_param, group.get("fused")) for views, sc, group, _ in runs]
    if sums:
        device = sums[0].device
        host = torch.cat([s.to(device, non_blocking=True) for s in sums]).tolist()  # the one sync
    else:
        host = []
    counts = [v["G"].numel() for views, _, _, _ in runs for v in views]
    if not per_param:
        counts = []
        for views, _, _, _ in runs:
            counts.append(sum(v["G"].numel() for v in views))
    for row, count in zip(host, counts):
        row[_NUMEL] = float(count)
    # one row per tensor (per_param) or per run, and the lr of each row
    sigmas = [sc.sigma for views, sc, _, _ in runs for _ in (views if per_param else views[:1])]
    tensor_names = [n for _, _, _, names_ in runs for n in names_]
    calls = opt.calls
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
