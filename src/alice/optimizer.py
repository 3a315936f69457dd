"""``alice.Alice``: the optimizer's arguments, param groups and torch's protocol.

The step in progress is :class:`alice.pending.PendingStep`; the state's layout is
:mod:`alice.state`; the math is :mod:`alice._math`; checkpoints are
:mod:`alice._checkpoint`. See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _checkpoint, _math, _scalars, errors
from . import distributed as _dist
from ._frameworks import refuse_framework_loops
from .pending import PendingStep, take_every_gradient, take_one_gradient
from .points import run_closure, warn_vanishing_perturbations
from .state import AliceState, Skips

__all__ = ["Alice", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "glass": {"hess_comp": "zero", "grad_glass": True},
    "hessian": {"hess_comp": "abs", "grad_glass": False},
    "glass_abs": {"hess_comp": "abs", "grad_glass": True},
    "glass_rms": {"hess_comp": "rms", "grad_glass": True},
}
"""The paper's ablation: which curvature terms enter the step."""


class Alice(Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        w1: float = 0.0,
        w2: float = 0.0,
        phi: float | None = None,
        omega: float = 1.0,
        limit_method: str = "adam",
        lr_min: float = 0.0,
        lr_max: float | None = None,
        scale_bounds_with_lr: bool = True,
        hess_comp: str = "abs",
        grad_glass: bool = True,
        quick_steps: int = 3,
        *,
        weight_decay: float = 0.0,
        seed: int | None = None,
        model: torch.nn.Module | None = None,
        closure_free: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        averages_dtype: torch.dtype | None = None,
    ):
        quick_steps = _scalars.check_quick_steps(quick_steps)
        if averages_dtype not in (None, torch.float32, _math.ROUNDED):
            raise ValueError(f"Invalid averages_dtype: {averages_dtype!r} (must be None or torch.bfloat16)")
        self.averages_dtype = None if averages_dtype == torch.float32 else averages_dtype
        seed = _dist.agree_seed(None if seed is None else _scalars.check_seed(seed))  # rank 0's, if distributed
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module or None)")
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps, w1=w1, w2=w2,
            phi=phi, omega=omega, limit_method=limit_method, lr_min=lr_min, lr_max=lr_max,
            scale_bounds_with_lr=scale_bounds_with_lr, hess_comp=hess_comp, grad_glass=grad_glass,
            foreach=foreach, fused=fused, weight_decay=weight_decay,
        )
        _scalars.check_group(defaults, quick_steps)
        self.quick_steps = quick_steps
        self.warmup_steps = _scalars.warmup_steps(defaults["betas"][0])
        if not isinstance(closure_free, bool):
            raise ValueError(f"Invalid closure_free: {closure_free!r} (must be a bool)")
        self.seed = seed
        self.model = model
        self.closure_free = closure_free
        self._init_counters()
        super().__init__(params, defaults)
        self._sync_state()  # (in closure-free mode it also positions the parameters)

    def _init_counters(self) -> None:
        self._calls = 0  # calls of step() that advanced the schedule
        self._state = AliceState(self.averages_dtype)
        self._skips = Skips()
        self._warned_rounding = False
        self._in_step = False
        self._closure_checked = False  # a Lightning closure's Trainer is checked at the first step
        self._pending: PendingStep | None = None  # the step in progress (between calls: closure-free mode)
        self._training = True

    @classmethod
    def preset(cls, name: str, params, **kwargs) -> Alice:
        """An Alice with the curvature terms of a named ablation (see ``PRESETS``):
        ``"glass"`` (glass only), ``"hessian"`` (|H| only), ``"glass_abs"``
        (glass + |H|, the default) or ``"glass_rms"`` (glass + rms of H)."""
        if name not in PRESETS:
            raise ValueError(f"Invalid preset: {name!r} (must be one of {tuple(PRESETS)})")
        return cls(params, **{**PRESETS[name], **kwargs})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _scalars.check_group(group, self.quick_steps)
            _scalars.check_params(self.param_groups)
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("lr0", _scalars.as_float(group["lr"]))  # the lr the bounds are relative to
        if "_state" in self.__dict__ and self.__dict__.get("state") is not None:
            self._sync_state()

    def __getstate__(self) -> dict[str, Any]:  # pickle, deepcopy
        return {"defaults": self.defaults, "model": self.model, "quick_steps": self.quick_steps,
                "seed": self.seed, "closure_free": self.closure_free, "averages_dtype": self.averages_dtype,
                "param_groups": self.param_groups,
                "training": self._training, "state_dict": self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(defaults=state["defaults"], model=state["model"], quick_steps=state["quick_steps"],
                             seed=state["seed"], param_groups=state["param_groups"],
                             closure_free=state.get("closure_free", False),
                             averages_dtype=state.get("averages_dtype"))
        self.warmup_steps = _scalars.warmup_steps(self.defaults["betas"][0])
        self._init_counters()
        self._training = state.get("training", True)  # (closure-free mode: eval() stays eval())
        super().__setstate__({"state": {}, "param_groups": self.param_groups})
        self._sync_state()
        self.load_state_dict(state["state_dict"])

    # -- state ------------------------------------------------------------------

    def _sync_state(self) -> bool:
        """Rebuild the flat buffers if the trainable parameters changed, and point
        ``self.state`` at their per-parameter views; returns whether it rebuilt."""
        if self._in_step or (not self._state.stale(self.param_groups) and self.state):
            return False  # (a layout change made inside a closure waits for the step's end)
        if self._pending is not None and self._pending.positioned:  # back to the centre first
            with torch.no_grad():
                for b in self._state.buckets:
                    for target, centre in zip(b.targets(), b.centre_views):
                        target.copy_(centre)  # (per tensor: the parameter may be on another device now)
        self._pending = None
        self._state.sync(self.param_groups)
        self._state.publish(self.state, self.param_groups)
        if not self._warned_rounding:
            sigmas = [_scalars.as_float(g["lr"]) for g in self.param_groups]
            self._warned_rounding = warn_vanishing_perturbations(self._state, sigmas)
        if self._state.buckets:
            self._skips.follow(self._state.buckets[0].device)  # built, or moved with the model
        self._next_point()  # closure-free mode: a fresh step over the new buffers
        return True

    def diagnostics(self, per_param: bool = False, names=None) -> dict[str, float]:
        """Statistics of the last step, as plain floats (the one host sync is here):
        glass and Hessian terms, clip fractions, the ratio to an Adam step, counters;
        see :func:`alice.diagnostics.diagnostics` and ``docs/diagnostics.md``."""
        from .diagnostics import diagnostics

        return diagnostics(self, per_param, names)

    @property
    def calls(self) -> int:
        """Calls of ``step()`` so far that advanced the sampling schedule."""
        return self._calls

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite loss or gradient, or an overflow (reads the
        device: call it outside the training loop's hot path)."""
        return self._skips.read()

    @property
    def steps(self) -> int:
        """Steps taken (the spec's ``n`` for parameters present from the first step)."""
        return self._calls - self.skipped_steps

    @property
    def evaluation(self) -> str | None:
        """``"plus"``, ``"minus"`` or ``"center"``: the point the parameters hold for the
        gradient being taken (inside a closure, or the next one in closure-free mode);
        ``None`` when they hold ``mu``."""
        pending = self._pending
        return pending.phase if pending is not None and pending.positioned else None

    def is_sampling_step(self, n: int) -> bool:
        """Whether step ``n`` (1-based, counted in calls) evaluates three gradients."""
        return _scalars.is_sampling_step(n, self.warmup_steps, self.quick_steps)

    # -- gradients ----------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients. Gradients of trainable parameters live in Alice's flat
        buffers and are zeroed there in place (``p.grad`` stays a tensor over the
        buffer, so backward keeps writing straight into it; a buffer nothing wrote to
        since Alice zeroed it before an evaluation is left as it is); others as torch does."""
        self._sync_state()
        self._state.zero_grad(self.param_groups, set_to_none)

    # -- the step -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one Alice step; ``closure`` re-evaluates the model and returns the loss
        (closure-free mode: take the gradient the loop computed, and move on)."""
        if self._in_step:
            raise errors.step_in_closure()
        if closure is not None and not callable(closure):
            raise errors.not_callable(closure)
        if closure is None and not self.closure_free:
            raise errors.no_closure()
        for i, group in enumerate(self.param_groups):  # schedulers and users may have changed them
            _scalars.check_group(group, self.quick_steps, where=f"param group {i}: ")
        self._sync_state()
        self._skips.warn()
        self._in_step = True
        try:
            if self.closure_free:
                return self._take_one_gradient(closure)
            refuse_framework_loops(closure, first=not self._closure_checked)
            self._closure_checked = True
            if self._state.foreign_gradients():
                raise errors.gradients_before_step()
            return self._take_every_gradient(closure)
        finally:
            self._in_step = False

    def _begin(self) -> PendingStep:
        return PendingStep(self._state, self.param_groups, calls=self._calls, seed=self.seed,
                           warmup_steps=self.warmup_steps, quick_steps=self.quick_steps)

    def _take_every_gradient(self, closure: Callable[[], Any]) -> Any:
        if not self._state.buckets:
            return run_closure(closure)
        step = self._pending = self._begin()
        try:
            loss, ok = take_every_gradient(step, closure, self.model)
        finally:
            self._pending = None
        self._count(step, ok)
        return loss

    def _take_one_gradient(self, closure: Callable[[], Any] | None) -> Any:
        if not self._training:
            raise errors.eval_mode()
        loss = None if closure is None else run_closure(closure)
        if self._pending is None:  # nothing trainable
            return loss
        ok, finished = take_one_gradient(self._pending, loss)
        if finished:
            self._count(self._pending, ok)
            self._pending = None
            self._next_point()
        return loss

    def _count(self, step: PendingStep, ok: Tensor | None) -> None:
        """Count a finished step (``ok``: taken or skipped, on the device; None: no group advanced)."""
        if ok is not None:
            self._skips.add(ok)
            self._calls = step.call

    # -- closure-free mode: where the parameters are between steps --------------------

    @torch.no_grad()
    def _next_point(self) -> None:
        """Closure-free mode, training: the parameters to where the next gradient is
        needed (a new step, or the pending one's point with edits made at the centre kept)."""
        if not (self.closure_free and self._training and self._state.buckets):
            return
        if self._pending is None:
            self._pending = self._begin()
        else:
            self._pending.reread_centre()
        self._pending.point()

    @property
    def training(self) -> bool:
        """Closure-free mode: True between :meth:`train` and :meth:`eval` (the parameters
        hold the evaluation point), False after :meth:`eval` (they hold ``mu``). Always
        True in closure mode, where the parameters hold ``mu`` between steps."""
        return self._training

    def train(self, mode: bool = True) -> Alice:
        """Closure-free mode: put the evaluation point back in the parameters (``mode``
        False is :meth:`eval`). HF Trainer and Accelerate call it when it exists."""
        if not mode:
            return self.eval()
        if self.closure_free and not self._training:
            self._training = True
            if not self._sync_state():  # (a rebuild positions the parameters itself)
                self._next_point()
        return self

    @torch.no_grad()
    def eval(self) -> Alice:
        """Closure-free mode: put the centre ``mu`` in the parameters, for evaluating or
        saving the model; :meth:`train` puts the evaluation point back."""
        if self.closure_free and self._training:
            self._training = False
            if self._pending is not None:
                self._pending.to_centre()
        return self

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the state, torch-style: ``"state"`` maps each trainable
        parameter's index to ``step`` (the steps it took part in), ``offset``
        (``nu - mu``), ``G, V, H, R`` (and ``mu`` for half-precision parameters);
        every ``"param_groups"`` entry carries the hyperparameters plus ``seed``,
        ``calls`` (the sampling schedule's count) and ``skipped_steps``, so that
        tools which keep only these two entries (``torch.distributed.checkpoint``)
        keep everything. ``"alice"`` repeats the optimizer-wide settings. In
        closure-free mode the step in progress is saved too."""
        def pack() -> dict[str, Any]:
            self._sync_state()
            return _checkpoint.pack(
                self.param_groups, self._state, self.state, seed=self.seed, calls=self._calls,
                skipped=self.skipped_steps, quick_steps=self.quick_steps, warmup_steps=self.warmup_steps,
                pending=self._pending,
            )

        return _checkpoint.with_save_hooks(self, pack)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (or from ``torch.distributed.checkpoint``'s
        helpers, or the previous format). Everything is validated first; an invalid
        dict raises ``ValueError`` and changes nothing. Values are copied into the
        existing buffers, on each parameter's device and in its state dtype."""
        _checkpoint.with_load_hooks(self, state_dict, self._load)

    def _load(self, state_dict: dict[str, Any]) -> None:
        loaded = _checkpoint.parse_state_dict(state_dict, self.param_groups, self.quick_steps, self._state)
        for group, saved in zip(self.param_groups, loaded.groups):
            group.clear()
            group.update(saved)
        self.quick_steps, self.seed, self._calls = loaded.quick_steps, loaded.seed, loaded.calls
        self.warmup_steps = _scalars.warmup_steps(self.param_groups[0]["betas"][0])
        self._sync_state()
        _checkpoint.load(self._state, loaded)
        self._state.publish(self.state, self.param_groups)
        self._skips.set(loaded.skipped)
        if self.closure_free and self._state.buckets:  # the saved step in progress goes on
            self._pending = self._begin()
            self._pending.resume(loaded.phase, loaded.sigmas, loaded.records)
            self._next_point()


# As torch.optim.Adam does: the docstring (the algorithm and the arguments) is set after the class.
Alice.__doc__ = r"""Alice: steps that minimise a model of the *expected* loss around the iterate.

Implements "Curvature in the Looking-Glass: Optimal Methods to Exploit Curvature of
Expectation in the Loss Landscape" (Duersch, Catanach, Safonov, Wendt; arXiv
2411.16914), exactly as in the contract ``docs/alice-update.md``. Near ReLU-like
kinks the gradient jumps between nearby points (the "gradient glass"); its density
:math:`\rho` is a curvature of the expected loss that the Hessian misses. Alice
estimates :math:`\rho` and a Hessian magnitude :math:`H` from gradients at Rademacher
perturbations of length :math:`\sigma = \text{lr}`, and takes the step that minimises
the expected-loss model, bounded Adam-style, from a Nesterov-like look-ahead.

.. math::
    \begin{aligned}
    &\textbf{state: } \mu \text{ (the parameter)},\ \nu = \mu,\ G = V = H = R = 0;\quad
        b_i = \min(\beta_i, (n-1)/n),\ \beta_3 = 1 - (q+1)(1-\beta_2) \\
    &\textbf{sampling step } (n \le 1/(1-\beta_1) \text{ or } (q+1) \mid n):
        g_\pm = \nabla L(\nu \pm \sigma z),\ z \sim \{\pm1\}^d;\
        H \leftarrow \text{avg}_{b_3}(|g_+ - g_-| / 2\sigma + w_2),\
        R \leftarrow \text{avg}_{b_3}(2 (\tfrac{g_+ + g_-}{2} - g_0)^2 / \sigma) \\
    &\textbf{every step: } g_0 = \nabla L(\nu);\ V \leftarrow \text{avg}_{b_2}(g_0^2),\
        G \leftarrow \text{avg}_{b_1}(g_0 + w_1 \operatorname{sign}(\nu) + w_2 \nu) \\
    &\textbf{move (after warm-up): } t = \operatorname{argmin} m(t) \text{ of } (G, H, R),\
        \text{clipped to } [\tau_1, \tau_2] \cdot \text{unit};\
        s = -\operatorname{sign}(G)\, t,\ \nu \leftarrow \mu + \omega s,\ \mu \leftarrow \mu + \phi s
    \end{aligned}

with :math:`\text{avg}_b(x)`: :math:`A \leftarrow x + b (A - x)`; :math:`m(t)` is the
spec's expected-loss model ("The move"), whose Hessian term is 0, :math:`H` or
:math:`\sqrt H` (``hess_comp``); the unit is 1, :math:`|G|` or
:math:`|G|/(\sqrt V + \epsilon)` (``limit_method``).

Args:
    params: parameters or param groups; every hyperparameter below but ``quick_steps``,
        ``seed``, ``model`` and ``closure_free`` may be set per group.
    lr: perturbation length :math:`\sigma` and unit of the step bounds (default 1e-3).
        May be 0 (a warm-up): the step evaluates once at :math:`\nu` and changes nothing.
    betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)); the constructor's
        :math:`\beta_1` sets the warm-up: ``floor(1/(1 - beta1))`` steps that sample, not move.
    eps: guard in denominators (default 1e-8).
    w1, w2: L1 and L2 weights (default 0), coupled: they enter the averaged gradient.
    weight_decay: decoupled, as AdamW's (default 0): a move first shrinks the centre by
        ``lr * weight_decay * mu`` (see :func:`alice.param_groups_for_weight_decay`).
    phi, omega: fractions of the step taken by :math:`\mu` (default ``1 - beta1``) and
        by the look-ahead :math:`\nu` (default 1).
    limit_method: ``"fixed"``, ``"sgdm"`` or ``"adam"`` (default): the bounds' unit.
    lr_min, lr_max: the bounds in that unit (defaults 0 and twice the group's first lr).
    scale_bounds_with_lr: bounds follow later lr changes by the same factor (default True).
    hess_comp: Hessian term ``"zero"``, ``"abs"`` (default) or ``"rms"``.
    grad_glass: include the glass term (default True).
    quick_steps: one-gradient steps between two sampling steps (default 3).
    seed: seed of the counter-based signs (default: drawn from torch's global RNG).
        Distributed, every rank uses rank 0's (``docs/distributed.md``).
    model: a module whose buffers (BatchNorm statistics) change as in one ordinary
        step, from the evaluation at :math:`\nu` (without it, each evaluation updates them).
    closure_free: ``step()`` without a closure, one gradient per call, for loops that
        call it themselves (an approximation; see :meth:`train` and the README).
    foreach: ``False`` runs the per-parameter loop (the readable ground truth).
    fused: compile each phase into one kernel (default: for buffers of at least 2**20
        elements where compiling works; ``alice.kernels.set_compile_enabled``).
    averages_dtype: ``torch.bfloat16`` keeps the averages ``G, V, H, R`` of float32
        state in bfloat16, 8 bytes per element less (``docs/cost.md``). They are
        computed in float32 and rounded stochastically (unbiased, from a counter-based
        stream: runs and resumes stay reproducible); an opt-in approximation, not the
        contract's float32 arithmetic. Default ``None``: the state dtype.

``step(closure)`` calls the closure (which evaluates the model, calls ``backward()``
and returns the loss) three times on a sampling step, once on a quick step, with the
parameters at each evaluation point and the RNG streams rewound in between, and
returns the loss at :math:`\nu`. A step whose losses or gradients are not finite
changes nothing; the decision stays on the device and is counted in :attr:`skipped_steps`.

Example:
    >>> opt = Alice(model.parameters(), lr=1e-3)
    >>> def closure():
    ...     opt.zero_grad()
    ...     loss = loss_fn(model(x), y)
    ...     loss.backward()
    ...     return loss
    >>> loss = opt.step(closure)

.. warning::
    The authors' code (``sandialabs/alice``) warms up for 9 rather than 10 steps at
    ``beta1 = 0.9`` and rounds the glass constant; Alice follows the paper's values.
"""
