r"""The model-fit probe: which expected-loss model predicts what a step really does.

Alice chooses its step per element by minimising

.. math::

    m(t) = -|g|\,t + \tfrac12 h\,t^2 + c\sqrt{\rho}\,t^{3/2},
    \qquad c = \sqrt{2/(3\pi)},

a model of the change of the *expected* loss
:math:`E_z[L(\mu + t\,s + \sigma z)] - E_z[L(\mu + \sigma z)]` (:math:`z`
Rademacher, :math:`\sigma` = lr). :func:`probe` takes the direction :math:`s`
Alice would step along now (from the optimizer's state, with
:func:`alice._math.signed_step`), measures that change for a few multiples
:math:`\lambda` of it on held data (the same :math:`K` draws of :math:`z` at
every length, so the difference has little noise), and compares it with three
nested predictions summed over the elements that move:

* ``linear`` (a): :math:`-\lambda \sum |G| t`;
* ``hessian`` (b): (a) :math:`+ \lambda^2 \sum \tfrac12 h t^2`;
* ``glass`` (c): (b) :math:`+ \lambda^{3/2} \sum c \sqrt{R}\, t^{3/2}`;

with :math:`t = |s|` and :math:`h` = ``H`` (``sqrt(H)`` for ``hess_comp="rms"``).
Everything is measured once with all parameters moving and, with ``layers``,
once per layer with only that layer moving (the perturbation :math:`\sigma z`
always covers every parameter, as in the expectation Alice estimates).

The error of a model is the root-mean-square miss over the lengths in units of
the linear decrease promised at :math:`\lambda = 1`, :math:`D = \sum |G| t`;
:math:`R^2 = 1 - \sum(M - P)^2 / \sum(M - \bar M)^2` over the lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import _math
from .._scalars import step_scalars
from .stats import param_names

__all__ = ["DEFAULT_LENGTHS", "GLASS_COEFFICIENT", "MODELS", "ProbeReport", "ProbeRow", "held_loss", "probe"]

MODELS = ("linear", "hessian", "glass")
"""The three nested expected-loss models, (a), (b) and (c)."""

DEFAULT_LENGTHS = (0.25, 0.5, 1.0, 2.0)
"""Multiples of Alice's current step at which the expected loss is measured."""

GLASS_COEFFICIENT = math.sqrt(8 * _math.GLASS / 9)
"""``c = sqrt(2 / (3 pi))`` of the glass term ``c sqrt(rho) t^1.5``: the value for which
``alice._math.optimal_step`` (which uses ``GLASS = 3 / (4 pi)``) minimises the model."""

_LAYERS = ("param", "module", "none")


def held_loss(model: torch.nn.Module, loss_fn: Callable[[Any, Any], Tensor], batches: Iterable,
              *, eval_mode: bool = True) -> Callable[[], Tensor]:
    """A loss callable for :func:`probe`: the mean of ``loss_fn(model(x), y)`` over the
    held ``batches`` (pairs ``(x, y)``; kept in a list), evaluated in ``model.eval()``
    mode by default (no dropout, no change to BatchNorm statistics)."""
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module)")
    if not callable(loss_fn):
        raise ValueError(f"Invalid loss_fn: {loss_fn!r} (must be callable as loss_fn(output, target))")
    held = list(batches)
    if not held:
        raise ValueError(f"Invalid batches: {batches!r} (must hold at least one (inputs, target) pair)")
    for i, batch in enumerate(held):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"Invalid batches[{i}]: {type(batch).__name__} (must be an (inputs, target) pair)")

    def loss() -> Tensor:
        training = model.training
        model.train(not eval_mode and training)
        try:
            return sum(_one_number(loss_fn(model(x), y), "loss_fn(model(x), y)") for x, y in held) / len(held)
        finally:
            model.train(training)

    return loss


@dataclass
class ProbeRow:
    """The probe's result for one set of moving parameters (``"all"`` or one layer)."""

    name: str
    numel: int
    decrease: float  # D = sum |G| t: the linear model's promised decrease at length 1
    terms: dict[str, float]  # each model's added term at length 1 ("linear" is -D)
    measured: list[float]  # mean change of the expected loss at each length
    stderr: list[float]  # its standard error over the draws
    predicted: dict[str, list[float]]
    err: dict[str, float] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)

    @property
    def noise(self) -> float:
        """RMS standard error of the measurement over the lengths, in units of D."""
        return _rms(self.stderr) / self.decrease if self.decrease > 0 else math.nan

    @property
    def best(self) -> str:
        """The simplest model whose error is within ``max(2 noise, 2% of it)`` of the smallest
        error: a richer model has to earn its extra term by more than the draws' noise."""
        finite = {m: e for m, e in self.err.items() if math.isfinite(e)}
        if not finite:
            return "n/a"
        least = min(finite.values())
        noise = self.noise if math.isfinite(self.noise) else 0.0
        return next(m for m in MODELS if m in finite and finite[m] <= least + max(2 * noise, 0.02 * least))


@dataclass
class ProbeReport:
    """What :func:`probe` measured: one :class:`ProbeRow` for all parameters, then one per layer."""

    lengths: list[float]
    draws: int
    rows: list[ProbeRow]

    def row(self, name: str) -> ProbeRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self, prefix: str = "probe") -> dict[str, float]:
        """A flat dict of floats (``"<prefix>/<row>/err_<model>"``, ``r2_<model>``, ``noise``,
        ``hess_term``, ``glass_term``, ``measured_1``: the change at length 1 over D) for loggers."""
        out: dict[str, float] = {}
        for r in self.rows:
            key = f"{prefix}/{r.name}" if prefix else r.name
            for m in MODELS:
                out[f"{key}/err_{m}"] = r.err[m]
                out[f"{key}/r2_{m}"] = r.r2[m]
            out[f"{key}/noise"] = r.noise
            d = r.decrease if r.decrease > 0 else math.nan
            out[f"{key}/hess_term"] = r.terms["hessian"] / d
            out[f"{key}/glass_term"] = r.terms["glass"] / d
            if 1.0 in self.lengths:
                out[f"{key}/measured_1"] = r.measured[self.lengths.index(1.0)] / d
        return out

    def table(self) -> str:
        """The report as a text table (one line per row; errors in units of D)."""
        head = (f"{'layer':<22}{'numel':>8} {'err lin':>8}{'err +H':>8}{'err +H+G':>9} "
                f"{'R2 lin':>7}{'R2 +H':>7}{'R2 +H+G':>8} {'H term':>7}{'G term':>7}{'noise':>7}  best")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            d = r.decrease if r.decrease > 0 else math.nan
            lines.append(
                f"{r.name[:22]:<22}{r.numel:>8} " + "".join(f"{r.err[m]:>8.3f}" for m in MODELS[:2])
                + f"{r.err['glass']:>9.3f} " + "".join(f"{r.r2[m]:>7.2f}" for m in MODELS[:2])
                + f"{r.r2['glass']:>8.2f} {r.terms['hessian'] / d:>7.3f}{r.terms['glass'] / d:>7.3f}"
                + f"{r.noise:>7.3f}  {r.best}"
            )
        lines.append(f"lengths {self.lengths} x Alice's step, {self.draws} Rademacher draws; errors, terms "
                     "and noise in units of the linear decrease at length 1")
        return "\n".join(lines)

    __str__ = table


def _one_number(value: Any, what: str) -> Any:
    """``value`` itself if it is a loss (a number or a one-element real tensor), else a
    ValueError naming ``what`` returned it."""
    if isinstance(value, bool) or not isinstance(value, (Tensor, int, float)):
        raise ValueError(f"Invalid {what}: returned {type(value).__name__} {value!r:.60} "
                         "(must return the loss as a number or a one-element tensor)")
    if isinstance(value, Tensor) and (value.numel() != 1 or value.is_complex()):
        raise ValueError(f"Invalid {what}: returned a tensor of shape {tuple(value.shape)} "
                         "(must return the loss as a number or a one-element tensor; reduce it, e.g. .mean())")
    return value


def _rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else math.nan


def _fit(measured: list[float], predicted: list[float], scale: float) -> tuple[float, float]:
    misses = [m - p for m, p in zip(measured, predicted)]
    err = _rms(misses) / scale if scale > 0 else math.nan
    mean = sum(measured) / len(measured)
    total = sum((m - mean) ** 2 for m in measured)
    r2 = 1 - sum(e * e for e in misses) / total if total > 0 else math.nan
    return err, r2


def _check(lengths, draws, layers):
    try:
        lengths = [float(x) for x in lengths]
    except (TypeError, ValueError):
        raise ValueError(f"Invalid lengths: {lengths!r} (must be a sequence of positive numbers)") from None
    if not lengths or not all(math.isfinite(x) and x > 0 for x in lengths):
        raise ValueError(f"Invalid lengths: {lengths!r} (must be a non-empty sequence of positive finite numbers)")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"Invalid draws: {draws!r} (must be an integer >= 1)")
    if layers not in _LAYERS:
        raise ValueError(f"Invalid layers: {layers!r} (must be one of {_LAYERS})")
    return lengths


@dataclass
class _Tensor:
    param: Tensor
    name: str
    base: Tensor  # the centre mu, in the state dtype
    step: Tensor  # Alice's signed step s
    sigma: float
    saved: Tensor  # the parameter as it was, restored at the end
    terms: Tensor  # (D, hessian term, glass term) at length 1, float64 on the device


@torch.no_grad()
def probe(
    optimizer,
    loss: Callable[[], Tensor] | None = None,
    *,
    model: torch.nn.Module | None = None,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    batches: Iterable | None = None,
    lengths: Sequence[float] = DEFAULT_LENGTHS,
    draws: int = 8,
    layers: str = "param",
    names: Iterable[tuple[str, Any]] | Mapping | None = None,
    seed: int = 0,
) -> ProbeReport:
    """Measure how well the linear, Hessian and glass models predict a step of ``optimizer``.

    Args:
        optimizer: an :class:`alice.Alice` that has taken steps (its state gives the
            direction and the models' coefficients ``G, H, R``).
        loss: a callable with no arguments returning the loss on held data at the
            parameters' current values (it must not change the model: no dropout, no
            BatchNorm updates). Or give ``model``, ``loss_fn`` and ``batches`` instead,
            for :func:`held_loss`.
        lengths: multiples of Alice's current step to measure at (default
            ``(0.25, 0.5, 1, 2)``).
        draws: Rademacher draws ``K`` of the perturbation ``sigma z`` (default 8).
        layers: ``"param"`` (a row per parameter tensor, default), ``"module"`` (a row
            per module: names up to the last dot) or ``"none"`` (the overall row only).
        names: parameter names, as for :func:`alice.diagnostics.diagnostics`.
        seed: seed of the draws (a CPU generator; the global RNG is not touched).

    Returns a :class:`ProbeReport`; ``print(report)`` shows the table. The
    parameters hold exactly their values again afterwards, and the optimizer's
    state is not changed. Cost: ``draws * (1 + len(lengths) * (1 + rows))`` loss
    evaluations, where ``rows`` is the number of per-layer rows.
    """
    lengths = _check(lengths, draws, layers)
    if loss is None:
        if model is None or loss_fn is None or batches is None:
            raise ValueError("Invalid loss: None (give a loss callable, or model, loss_fn and batches)")
        loss = held_loss(model, loss_fn, batches)
    elif not callable(loss):
        raise ValueError(f"Invalid loss: {loss!r} (must be a callable with no arguments returning the held loss)")
    elif model is not None or loss_fn is not None or batches is not None:
        raise ValueError("Invalid loss: give either a loss callable or model, loss_fn and batches, not both")
    if not hasattr(optimizer, "quick_steps") or not hasattr(optimizer, "param_groups"):
        raise ValueError(f"Invalid optimizer: {type(optimizer).__name__} (must be an alice.Alice)")

    # closure-free mode, training: the parameters hold the evaluation point; measure around mu
    at_point = getattr(optimizer, "closure_free", False) and optimizer.training
    if at_point:
        optimizer.eval()
    try:
        return _probe(optimizer, loss, lengths, draws, layers, names, seed)
    finally:
        if at_point:
            optimizer.train()


def _probe(optimizer, loss, lengths, draws, layers, names, seed) -> ProbeReport:
    tensors = _gather(optimizer, names)
    if not tensors or optimizer.calls == 0:
        raise ValueError("Invalid optimizer: it holds no state yet (take at least one step before probing)")
    units = _units(tensors, layers)
    generator = torch.Generator().manual_seed(int(seed))
    evaluate = lambda: torch.as_tensor(_one_number(loss(), "loss")).detach().to(torch.float64).reshape(())  # noqa: E731
    changes: dict[str, list[list[Tensor]]] = {name: [[] for _ in lengths] for name in ("all", *units)}
    try:
        for _ in range(draws):
            noisy = []
            for t in tensors:
                z = torch.randint(0, 2, t.base.shape, generator=generator).to(t.base) * 2 - 1
                noisy.append(t.base + t.sigma * z)
                t.param.copy_(noisy[-1])
            f0 = evaluate()
            for j, lam in enumerate(lengths):
                for t, x in zip(tensors, noisy):
                    t.param.copy_(x + lam * t.step)
                changes["all"][j].append(evaluate() - f0)
                for t, x in zip(tensors, noisy):
                    t.param.copy_(x)
                for name, members in units.items():
                    for k in members:
                        tensors[k].param.copy_(noisy[k] + lam * tensors[k].step)
                    changes[name][j].append(evaluate() - f0)
                    for k in members:
                        tensors[k].param.copy_(noisy[k])
    finally:
        for t in tensors:
            t.param.copy_(t.saved)

    # one transfer: every change and every tensor's terms
    order = list(changes)
    device = tensors[0].terms.device
    stacked = torch.stack([torch.stack([torch.stack(per) for per in changes[n]]) for n in order]).to(device)
    terms = torch.stack([t.terms.to(device) for t in tensors])
    values, term_rows = stacked.tolist(), terms.tolist()
    rows = []
    for name, per_length in zip(order, values):
        members = range(len(tensors)) if name == "all" else units[name]
        rows.append(_row(name, sum(tensors[k].param.numel() for k in members),
                         [term_rows[k] for k in members], per_length, lengths))
    return ProbeReport(lengths=lengths, draws=draws, rows=rows)


def _gather(optimizer, names) -> list[_Tensor]:
    labels = param_names(optimizer, names)
    tensors = []
    c = GLASS_COEFFICIENT
    for group, group_names in zip(optimizer.param_groups, labels):
        sc = step_scalars(group, optimizer.quick_steps)
        for p, name in zip(group["params"], group_names):
            entry = optimizer.state.get(p)
            if not p.requires_grad or not entry or "G" not in entry:
                continue
            G, V, H, R = entry["G"], entry["V"], entry["H"], entry["R"]
            step = _math.signed_step(G, V, H, R, eps=sc.eps, tau1=sc.tau1, tau2=sc.tau2, hess_comp=sc.hess_comp,
                                     grad_glass=sc.grad_glass, limit_method=sc.limit_method)
            t = step.abs()
            h = _math.curvature(H, "rms" if sc.hess_comp == "rms" else "abs")
            terms = torch.stack([
                (G.abs() * t).sum(dtype=torch.float64),
                (0.5 * h * t * t).sum(dtype=torch.float64),
                (c * torch.sqrt(R) * t * torch.sqrt(t)).sum(dtype=torch.float64),
            ])
            base = entry["mu"] if "mu" in entry else p.detach().to(G.dtype)
            tensors.append(_Tensor(p, name, base.detach().clone(), step, sc.sigma, p.detach().clone(), terms))
    return tensors


def _units(tensors: list[_Tensor], layers: str) -> dict[str, list[int]]:
    if layers == "none":
        return {}
    units: dict[str, list[int]] = {}
    for k, t in enumerate(tensors):
        key = t.name if layers == "param" else (t.name.rsplit(".", 1)[0] if "." in t.name else t.name)
        units.setdefault(key, []).append(k)
    if "all" in units:  # keep the overall row's name unambiguous
        units["all (layer)"] = units.pop("all")
    return units


def _row(name, numel, term_rows, per_length, lengths) -> ProbeRow:
    decrease = sum(r[0] for r in term_rows)
    hess = sum(r[1] for r in term_rows)
    glass = sum(r[2] for r in term_rows)
    measured = [sum(d) / len(d) for d in per_length]
    stderr = [
        math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else math.nan
        for d, m in zip(per_length, measured)
    ]
    predicted = {
        "linear": [-lam * decrease for lam in lengths],
        "hessian": [-lam * decrease + lam * lam * hess for lam in lengths],
        "glass": [-lam * decrease + lam * lam * hess + lam ** 1.5 * glass for lam in lengths],
    }
    row = ProbeRow(name=name, numel=numel, decrease=decrease,
                   terms={"linear": -decrease, "hessian": hess, "glass": glass},
                   measured=measured, stderr=stderr, predicted=predicted)
    for m in MODELS:
        row.err[m], row.r2[m] = _fit(measured, predicted[m], decrease)
    return row
