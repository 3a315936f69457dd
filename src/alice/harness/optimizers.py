"""The optimizers ``alice compare`` can run, and the ``--optimizer`` syntax.

``--optimizer NAME[,key=value...]`` picks a registered optimizer (``alice optimizers``
lists them) and ``--optimizer module:Class[,key=value...]`` any ``torch.optim``-style
class; ``lr=`` sets the learning rate (else the task's default for that optimizer).
Values are Python literals (``betas=(0.9,0.99)``, ``nesterov=True``).

Gradient evaluations are counted honestly: every closure call is one, and the
Hessian-vector products of AdaHessian and Sophia-H (Hutchinson estimates made by
``pytorch-optimizer`` on steps ``1, 1 + k, 1 + 2k, ...`` with ``update_period = k``)
count one each per noise sample, since each costs about one more backward pass.
Those two also need ``backward(create_graph=True)``, as their documentation says.
The rule for a budget of evaluations: a closure call counts one, a Hessian-vector
product one (a backward pass through the kept graph), so an Alice sampling step costs 3.

Weight decay: ``adamw`` and ``alice-wd`` take the same decoupled ``weight_decay`` (0.01,
AdamW's default) on the same groups, :func:`alice.param_groups_for_weight_decay` (no
decay on biases and norm weights); both shrink a weight by ``lr * weight_decay`` per step.

The ablation of the paper's curvature terms runs each preset under the default bound
(``limit_method="adam"``, ``lr_max = 2 lr``) and, as ``*-fixed``, under a bound that
rarely binds: ``limit_method="fixed"`` with ``lr_max = WIDE_BOUND * lr``, so that the
curvature model, not the bound, sets the step (``clip_high`` in the results shows which).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import alice

from .tasks import Task


def _pytorch_optimizer(name: str):
    """A class of the optional ``pytorch-optimizer`` package, or an error naming the extra."""
    try:
        module = importlib.import_module("pytorch_optimizer")
    except ImportError as error:
        raise ImportError(
            f"{name} (--optimizer adahessian, sophia) needs pytorch-optimizer: "
            "pip install 'alice-optimizer[baselines]'"
        ) from error
    return getattr(module, name)


WIDE_BOUND = 50.0  # lr_max of the fixed-bound presets, in units of lr


def _alice(preset: str, wide: bool = False, **fixed) -> Callable:
    def build(params, lr, seed, model, **kw):
        bound = dict(limit_method="fixed", lr_max=WIDE_BOUND * lr) if wide else {}
        return alice.Alice.preset(preset, params, lr=lr, seed=seed, model=model, **{**bound, **fixed, **kw})

    return build


def _torch(name: str, **fixed) -> Callable:
    return lambda params, lr, seed, model, **kw: getattr(torch.optim, name)(params, lr=lr, **{**fixed, **kw})


def _external(name: str) -> Callable:
    return lambda params, lr, seed, model, **kw: _pytorch_optimizer(name)(params, lr=lr, **kw)


@dataclass(frozen=True)
class Spec:
    """A registered optimizer. ``family`` names its default lr in ``Task.lrs``."""

    summary: str
    family: str
    factory: Callable
    create_graph: bool = False
    # The class whose constructor takes the ``key=value`` settings (called lazily: it may import),
    # and the keywords the factory passes itself.
    target: Callable[[], type] = lambda: torch.optim.Optimizer
    fixed: tuple[str, ...] = ("params", "lr")
    # Decoupled weight decay on the groups of alice.param_groups_for_weight_decay (None: one group).
    weight_decay: float | None = None


_ALICE = dict(target=lambda: alice.Alice, fixed=("params", "lr", "seed", "model"))


def _torch_target(name: str) -> dict:
    return dict(target=lambda: getattr(torch.optim, name))


def _external_target(name: str) -> dict:
    return dict(target=lambda: _pytorch_optimizer(name))


ADAMW_DECAY = 0.01
_PRESETS = {"alice": ("glass_abs", "glass + |Hessian| (glass_abs), the default"),
            "alice-glass": ("glass", "glass density only, no Hessian"),
            "alice-hessian": ("hessian", "|Hessian| only, no glass"),
            "alice-glass_rms": ("glass_rms", "glass + rms Hessian")}

OPTIMIZERS: dict[str, Spec] = {
    **{name: Spec(f"Alice {what}; quick_steps=3", "alice", _alice(preset), **_ALICE)
       for name, (preset, what) in _PRESETS.items()},
    **{f"{name}-fixed": Spec(f"Alice {what}; limit_method='fixed', lr_max={WIDE_BOUND:g} lr", "alice",
                             _alice(preset, wide=True), **_ALICE)
       for name, (preset, what) in _PRESETS.items()},
    "alice-q0": Spec("Alice glass_abs sampling on every step (quick_steps=0)", "alice",
                     _alice("glass_abs", quick_steps=0), **_ALICE),
    "alice-bf16": Spec("Alice glass_abs, averages G, V, H, R kept in bfloat16 (stochastic rounding)", "alice",
                       _alice("glass_abs", averages_dtype=torch.bfloat16), **_ALICE),
    "alice-wd": Spec(f"Alice glass_abs, decoupled weight_decay={ADAMW_DECAY} as adamw (no decay on biases, norms)",
                     "alice", _alice("glass_abs"), weight_decay=ADAMW_DECAY, **_ALICE),
    "adam": Spec("torch.optim.Adam", "adam", _torch("Adam"), **_torch_target("Adam")),
    "adamw": Spec(f"torch.optim.AdamW, weight_decay={ADAMW_DECAY} (no decay on biases, norms)", "adamw",
                  _torch("AdamW"), weight_decay=ADAMW_DECAY, **_torch_target("AdamW")),
    "sgd": Spec("torch.optim.SGD, momentum 0.9", "sgd", _torch("SGD", momentum=0.9), **_torch_target("SGD")),
    "adahessian": Spec("AdaHessian (pytorch-optimizer; Hutchinson every step)", "adahessian",
                       _external("AdaHessian"), create_graph=True,
                       **_external_target("AdaHessian")),
    "sophia": Spec("Sophia-H (pytorch-optimizer SophiaH; Hutchinson every 10 steps)", "sophia",
                   _external("SophiaH"), create_graph=True,
                   **_external_target("SophiaH")),
}


def _literal(text: str):
    """A Python literal, or the text itself (so ``hess_comp=abs`` needs no quotes)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


@dataclass(frozen=True)
class Choice:
    """An optimizer as given to ``--optimizer``: a registered name or a class, plus settings."""

    label: str
    spec: Spec | None
    cls: str | None = None
    kwargs: dict = field(default_factory=dict)
    lr: float | None = None

    def default_lr(self, task: Task) -> float:
        """The explicit ``lr=``, else the task's documented default for this optimizer family."""
        if self.lr is not None:
            return self.lr
        if self.spec is None or self.spec.family not in task.lrs:
            raise ValueError(f"--optimizer {self.label}: give lr=... (no default for {task.name})")
        return task.lrs[self.spec.family]

    @property
    def create_graph(self) -> bool:
        return self.spec.create_graph if self.spec else bool(self.kwargs.get("create_graph", False))

    def build(self, model: torch.nn.Module, lr: float, seed: int) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.spec is not None:
            kwargs = dict(self.kwargs)
            if self.spec.weight_decay is not None:
                decay = kwargs.pop("weight_decay", self.spec.weight_decay)
                params = alice.param_groups_for_weight_decay(model, decay)
            return self.spec.factory(params, lr, seed, model, **kwargs)
        module, _, name = self.cls.partition(":")
        cls = getattr(importlib.import_module(module), name)
        kwargs = {k: v for k, v in self.kwargs.items() if k != "create_graph"}
        return cls(params, lr=lr, **kwargs)


def step_cost(opt: torch.optim.Optimizer, step: int) -> int:
    """Gradient evaluations that step ``step`` (1-based) of ``opt`` costs by the rule above:
    3 on an Alice sampling step, else 1, plus Hessian-vector products."""
    sampling = isinstance(opt, alice.Alice) and opt.is_sampling_step(step)
    return (3 if sampling else 1) + hvp_evals(opt, step)


def steps_within(choice: "Choice", model: torch.nn.Module, lr: float, evals: int) -> int:
    """The most steps whose gradient evaluations add up to at most ``evals``."""
    opt = choice.build(model, lr, seed=0)
    steps, spent = 0, 0
    while spent + step_cost(opt, steps + 1) <= evals:
        steps += 1
        spent += step_cost(opt, steps)
    return steps


def hvp_evals(opt: torch.optim.Optimizer, step: int) -> int:
    """Hessian-vector products that ``opt`` made at ``step`` (1-based), beyond its closure calls:
    ``num_samples`` on the steps where a Hutchinson optimizer refreshes its estimate."""
    period, samples = getattr(opt, "update_period", None), getattr(opt, "num_samples", None)
    if not (isinstance(period, int) and isinstance(samples, int)):
        return 0
    return samples if (step - 1) % period == 0 else 0


def _split(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes, so ``betas=(0.9,0.99)`` stays whole."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def _check_keys(text: str, cls: type, keys, fixed: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    """Refuse settings that ``cls``'s constructor does not take, before anything runs or is written."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read: let the constructor judge
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [name for name, p in parameters.items() if name not in fixed and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)] + list(extra)
    for key in keys:
        if key in fixed:
            raise ValueError(f"Invalid --optimizer {text!r}: {key!r} is set by alice compare, not by a key=value")
        if key not in valid:
            raise ValueError(f"Invalid --optimizer {text!r}: unknown key {key!r} for {cls.__name__} "
                             f"(valid: lr, {', '.join(valid)})")


def parse(text: str) -> Choice:
    """Parse one ``--optimizer`` value; errors list the valid names."""
    head, *pairs = _split(text)
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"Invalid --optimizer {text!r}: {pair!r} is not key=value")
        kwargs[key] = _literal(value)
    lr = kwargs.pop("lr", None)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise ValueError(f"Invalid --optimizer {text!r}: lr must be a number > 0, got {lr!r}")
    label = ",".join([head] + [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in kwargs.items()])
    if ":" in head:
        module, _, name = head.partition(":")
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError as error:
            raise ValueError(f"Invalid --optimizer {text!r}: cannot import {module!r} ({error})") from None
        if not isinstance(found, type):
            raise ValueError(f"Invalid --optimizer {text!r}: {module} has no class {name!r}")
        _check_keys(text, found, kwargs, ("params", "lr"), extra=("create_graph",))
        return Choice(label, None, head, kwargs, lr)
    if head not in OPTIMIZERS:
        raise ValueError(f"Invalid --optimizer: {head!r} (valid: {', '.join(OPTIMIZERS)}, or module:Class)")
    spec = OPTIMIZERS[head]
    _check_keys(text, spec.target(), kwargs, spec.fixed)
    return Choice(label, spec, None, kwargs, lr)
