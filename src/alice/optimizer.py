"""``alice.Alice``: the optimizer class (bookkeeping only; the math is in ``_math``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed as _dist
from . import schedule as _schedule
from ._rademacher import tensor_key
from .evaluation import CLOSURE_HELP, ClosureError, Evaluations, Replay, check_loss, losses_finite
from .functional import alice_, samples_ok
from ._checkpoint import parse_state_dict
from ._frameworks import refuse_framework_loops
from .state import STATE_KEYS, AliceState

__all__ = ["Alice", "ClosureError", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "glass": {"hess_comp": "zero", "grad_glass": True},
    "hessian": {"hess_comp": "abs", "grad_glass": False},
    "glass_abs": {"hess_comp": "abs", "grad_glass": True},
    "glass_rms": {"hess_comp": "rms", "grad_glass": True},
}
"""The paper's ablation: which curvature terms enter the step."""

_FORMAT = 2
"""Version of the state dict layout (1: ``nu`` per parameter and counters under ``"alice"``)."""


_DIRECTION = {"plus": 1.0, "minus": -1.0, "center": 0.0}


@dataclass
class _Call:
    """One Alice step in progress: its groups and lrs, count, kind and evaluations."""

    groups: list[dict]
    lrs: list[float]
    advancing: bool  # some group has lr > 0 (else nothing changes and nothing counts)
    call: int
    sampling: bool
    ev: Evaluations


def _runs(active: list[bool], history: list[int]) -> list[tuple[int, int]]:
    """Maximal ``[first, last)`` runs of consecutive active parameters of one class
    (equal classes have equal counts, so one kernel call serves the run)."""
    runs, k = [], 0
    while k < len(active):
        if not active[k]:
            k += 1
            continue
        first = k
        while k < len(active) and active[k] and history[k] == history[first]:
            k += 1
        runs.append((first, k))
    return runs


class Alice(Optimizer):
    r"""Alice: steps that minimise a model of the *expected* loss around the iterate.

    Implements the update of "Curvature in the Looking-Glass: Optimal Methods to
    Exploit Curvature of Expectation in the Loss Landscape" (Duersch, Catanach,
    Safonov, Wendt; arXiv 2411.16914), exactly as in the project's contract
    ``docs/alice-update.md``. Near ReLU-like kinks the gradient jumps between
    nearby points (the "gradient glass"); its density :math:`\rho` is a curvature
    of the expected loss that the Hessian misses. Alice estimates :math:`\rho` and
    a Hessian magnitude :math:`H` from gradients at Rademacher perturbations of
    length :math:`\sigma = \text{lr}`, and takes the step that minimises the
    expected-loss model, bounded Adam-style, from a Nesterov-like look-ahead.

    .. math::
        \begin{aligned}
        &\textbf{state: } \mu \text{ (held by the parameter)},\ \nu = \mu,\
            G = V = H = R = 0;\quad
            b_i = \min(\beta_i, (n-1)/n),\ \beta_3 = 1 - (q+1)(1-\beta_2) \\
        &\textbf{sampling step } (n \le 1/(1-\beta_1) \text{ or } (q+1) \mid n):
            z \sim \{\pm1\}^d,\ g_\pm = \nabla L(\nu \pm \sigma z),\ g_0 = \nabla L(\nu) \\
        &\quad H \leftarrow \text{avg}_{b_3}\big(|g_+ - g_-| / 2\sigma + w_2\big)
            \ (\text{or the square for "rms"}),\quad
            R \leftarrow \text{avg}_{b_3}\big(2 (\tfrac{g_+ + g_-}{2} - g_0)^2 / \sigma\big) \\
        &\textbf{quick step: } g_0 = \nabla L(\nu) \text{ only} \\
        &\textbf{always: } V \leftarrow \text{avg}_{b_2}(g_0^2),\quad
            G \leftarrow \text{avg}_{b_1}\big(g_0 + w_1 \operatorname{sign}(\nu) + w_2 \nu\big) \\
        &\textbf{move (after warm-up): } \alpha = \tfrac{3}{4\pi} R / (|G| + \epsilon),\quad
            t = |G| / \big(\alpha + h + \sqrt{\alpha(\alpha + 2h)} + \epsilon\big) \\
        &\quad t \leftarrow \text{clip}\big(t, [\tau_1, \tau_2] \cdot |G| / (\sqrt V + \epsilon)\big),
            \quad s = -\operatorname{sign}(G)\, t,\quad
            \nu \leftarrow \mu + \omega s,\quad \mu \leftarrow \mu + \phi s
        \end{aligned}

    where :math:`\text{avg}_b(x)` means :math:`A \leftarrow x + b (A - x)`,
    :math:`h` is :math:`0`, :math:`H` or :math:`\sqrt H` (``hess_comp``), and the
    bound's unit is 1, :math:`|G|` or :math:`|G|/(\sqrt V + \epsilon)` (``limit_method``).

    Args:
        params: parameters or param groups. Every hyperparameter below except
            ``quick_steps`` (and ``seed``, ``model``) may be set per group.
        lr: perturbation length :math:`\sigma` and the unit of the step bounds (default
            1e-3). May be 0 (a scheduler's warm-up): such a step evaluates once at
            :math:`\nu` and changes nothing for the group.
        betas: :math:`(\beta_1, \beta_2)` for the averages of the gradient and of its
            square (default (0.9, 0.999)). The constructor's :math:`\beta_1` also sets
            the warm-up: the first ``floor(1/(1 - beta1))`` steps sample and do not move.
        eps: guard in denominators (default 1e-8).
        w1, w2: L1 and L2 weights (default 0), coupled: they enter the averaged gradient.
        weight_decay: decoupled weight decay, as in AdamW (default 0): each moving step
            first shrinks the centre, ``mu <- mu - lr * weight_decay * mu``; it never
            enters the averages. Use :func:`alice.param_groups_for_weight_decay` to exempt
            biases and norm weights.
        phi: fraction of the step taken by the centre :math:`\mu` (default ``1 - beta1``).
        omega: fraction of the step taken by the look-ahead :math:`\nu` (default 1).
        limit_method: ``"fixed"``, ``"sgdm"`` or ``"adam"`` (default): the unit of the bounds.
        lr_min, lr_max: lower and upper step bounds in that unit (defaults 0 and
            twice the group's initial lr).
        scale_bounds_with_lr: bounds follow later changes of the group's lr (schedulers)
            by the same factor (default True).
        hess_comp: Hessian term ``"zero"``, ``"abs"`` (default) or ``"rms"``.
        grad_glass: include the glass term (default True).
        quick_steps: one-gradient steps between two sampling steps (default 3); global.
        seed: seed of the counter-based Rademacher signs (default: drawn once from
            torch's global RNG, so ``torch.manual_seed`` makes runs reproducible). When a
            process group is initialised, every rank uses rank 0's seed (drawn or given;
            a different explicit seed on another rank raises ``ValueError``), and a step
            is skipped on every rank when any rank sees a non-finite value: see
            ``alice.distributed`` and ``docs/distributed.md``.
        model: optional module whose buffers (BatchNorm running statistics) must change
            as in one ordinary training step, from the evaluation at :math:`\nu`. Without
            it, a sampling step's three forward passes each update them (as in the
            authors' code). With it, a skipped (non-finite) step also leaves them untouched.
        foreach: ``False`` runs the per-parameter loop (the readable ground truth);
            otherwise each phase runs over whole flat buffers.
        fused: compile each phase into one kernel with ``torch.compile`` (default: for
            buffers of at least 2**20 elements where compiling works; see
            ``alice.kernels.set_compile_enabled`` to turn compiling off everywhere).

    ``step(closure)`` needs a closure that re-evaluates the model, calls ``backward()``
    and returns the loss; it is called three times on a sampling step and once on a
    quick step, with the parameters at the evaluation point, and ``step`` returns the
    loss at :math:`\nu`. The global RNG streams are rewound between the three calls
    so that dropout masks agree. A step whose loss or gradients are not finite (or
    whose averages would overflow) changes nothing; the decision is taken on the
    device, without a host sync, and counted in :attr:`skipped_steps`.

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
        ``beta1 = 0.9`` (a float32 comparison) and rounds the glass constant; Alice
        follows the paper's exact values, so trajectories differ from it at those points.
    """

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
    ):
        quick_steps = _schedule.check_quick_steps(quick_steps)
        seed = _dist.agree_seed(None if seed is None else _schedule.check_seed(seed))  # rank 0's, if distributed
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module or None)")
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps, w1=w1, w2=w2,
            phi=phi, omega=omega, limit_method=limit_method, lr_min=lr_min, lr_max=lr_max,
            scale_bounds_with_lr=scale_bounds_with_lr, hess_comp=hess_comp, grad_glass=grad_glass,
            foreach=foreach, fused=fused, weight_decay=weight_decay,
        )
        _schedule.check_group(defaults, quick_steps)
        self.quick_steps = quick_steps
        self.warmup_steps = _schedule.warmup_steps(defaults["betas"][0])
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
        self._state = AliceState()
        self._skipped: Tensor | None = None  # on the first bucket's device
        self._skipped_seen: Tensor | None = None  # a host copy, refreshed without waiting
        self._warned = 0
        self._in_step = False
        self._closure_checked = False  # a Lightning closure's Trainer is checked at the first step
        self.evaluation: str | None = None  # "plus", "minus" or "center": the point being evaluated
        self._pending: _Call | None = None  # closure-free mode: the Alice step in progress
        self._phase = "center"  # closure-free mode: which of its gradients comes next
        self._training = True
        self._losses: list = []

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
            _schedule.check_group(group, self.quick_steps)
            seen = set()
            for p in (q for g in self.param_groups for q in g["params"]):
                if id(p) in seen:
                    raise ValueError(f"Invalid params: a parameter of shape {tuple(p.shape)} is listed twice")
                seen.add(id(p))
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(
                        f"Invalid parameter of dtype {p.dtype} and shape {tuple(p.shape)} "
                        "(Alice updates real floating-point parameters only)"
                    )
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("lr0", _schedule.as_float(group["lr"]))  # the lr the bounds are relative to
        if "_state" in self.__dict__ and self.__dict__.get("state") is not None:
            self._sync_state()

    def __getstate__(self) -> dict[str, Any]:  # pickle, deepcopy
        return {"defaults": self.defaults, "model": self.model, "quick_steps": self.quick_steps,
                "seed": self.seed, "closure_free": self.closure_free, "param_groups": self.param_groups,
                "training": self._training, "state_dict": self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(defaults=state["defaults"], model=state["model"], quick_steps=state["quick_steps"],
                             seed=state["seed"], param_groups=state["param_groups"],
                             closure_free=state.get("closure_free", False))
        self.warmup_steps = _schedule.warmup_steps(self.defaults["betas"][0])
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
        pending = self.closure_free and self._pending is not None and self._training
        if pending:  # the parameters hold an evaluation point: back to the centre first
            with torch.no_grad():
                for b in self._state.buckets:
                    for target, held in zip(b.targets(), b.held_views):
                        target.copy_(held)  # (per tensor: the parameter may be on another device now)
            self._pending = None
        self._state.sync(self.param_groups)
        self._publish_state()
        self._warn_vanishing_perturbations()
        if self._state.buckets:
            device = self._state.buckets[0].device
            if self._skipped is None or self._skipped.device != device:  # built, or moved with the model
                skipped = 0 if self._skipped is None else int(self._skipped)
                self._skipped = torch.full((), skipped, dtype=torch.int64, device=device)
                self._skipped_seen = (torch.full((), skipped, dtype=torch.int64, pin_memory=True)
                                      if device.type == "cuda" else None)
            if self.closure_free and self._training:
                self._position(new=True)  # a fresh step over the new buffers
        return True

    def _warn_vanishing_perturbations(self) -> None:
        """Warn once when ``sigma = lr`` is below half the spacing of a half-precision
        parameter's values for most of its elements: ``mu +- sigma z`` then rounds back to
        ``mu``, the three gradients coincide and ``H`` and ``R`` read zero there."""
        if getattr(self, "_warned_rounding", False):
            return
        for b in self._state.buckets:
            if not b.half or not b.numel:
                continue
            sigma, mu = _schedule.as_float(self.param_groups[b.group]["lr"]), b.buffers["mu"]
            exponent = torch.frexp(mu).exponent
            spacing = torch.where(mu == 0, 0.0, torch.ldexp(torch.ones_like(mu), exponent - 1)) * torch.finfo(b.held.dtype).eps
            vanishing = (sigma < spacing / 2).float()
            shares = [float(v.mean()) for v in b.views(vanishing) if v.numel()]
            worst = max(range(len(shares)), key=shares.__getitem__)
            if shares[worst] > 0.5:
                self._warned_rounding = True
                warnings.warn(
                    f"Alice: lr = sigma = {sigma:g} is below half the {b.held.dtype} spacing for "
                    f"{100 * shares[worst]:.0f}% of the elements of a parameter of shape "
                    f"{tuple(b.params[worst].shape)} (param group {b.group}): there mu +- sigma z rounds back "
                    "to mu, the perturbed gradients equal the unperturbed one and H and R read zero. "
                    "Keep float32 parameters and train under torch.autocast instead.",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return

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
        skipped = 0 if self._skipped is None else int(self._skipped)
        self._warn_skips(skipped)
        return skipped

    @property
    def steps(self) -> int:
        """Steps taken (the spec's ``n`` for parameters present from the first step)."""
        return self._calls - self.skipped_steps

    def is_sampling_step(self, n: int) -> bool:
        """Whether step ``n`` (1-based, counted in calls) evaluates three gradients."""
        return _schedule.is_sampling_step(n, self.warmup_steps, self.quick_steps)

    def _warn_skips(self, skipped: int | None = None) -> None:
        """Warn once skipped steps are known on the host (read lazily: never waits)."""
        if skipped is None:
            if self._skipped is None:
                return
            seen = self._skipped_seen if self._skipped_seen is not None else self._skipped
            skipped = int(seen)
        if skipped > self._warned:
            if self._warned == 0:
                warnings.warn(
                    f"Alice skipped {skipped} step(s): a loss or gradient was not finite, or the "
                    "averages would overflow. Parameters and optimizer state were left unchanged; "
                    "skipped steps are counted in optimizer.skipped_steps. This warning is shown once.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._warned = skipped

    # -- gradients ----------------------------------------------------------------

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients. Gradients of trainable parameters live in Alice's flat
        buffers and are zeroed there in place (``p.grad`` stays a tensor over the
        buffer, so backward keeps writing straight into it); others as torch does."""
        self._sync_state()
        owned = set()
        for b in self._state.buckets:
            b.grads.zero_()
            b.point_grads_at_buffers()  # and what was written there is now accounted for
            owned.update(id(p) for p in b.params)
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) not in owned and p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.detach_().requires_grad_(False).zero_()

    def _refuse_outside_gradients(self) -> None:
        for b in self._state.buckets:
            if b.foreign_gradients():
                raise ClosureError(
                    "Gradients were computed before Alice.step(closure) (backward ran outside the "
                    "closure, e.g. to accumulate micro-batches); Alice would discard them, since it "
                    "evaluates the closure itself at perturbed points. Accumulate inside the closure "
                    "(loop over the micro-batches there, calling backward on each), or call "
                    "optimizer.zero_grad() before step() if those gradients are not needed."
                )

    # -- the step -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one Alice step; ``closure`` re-evaluates the model and returns the loss."""
        if self._in_step:
            raise ClosureError("Alice.step() was called from inside its own closure; the closure "
                               "must only evaluate the model and call backward().")
        if closure is not None and not callable(closure):
            raise ClosureError(f"Alice.step() got closure={closure!r}, which is not callable.\n" + CLOSURE_HELP)
        if closure is None and not self.closure_free:
            raise ClosureError(
                "Alice.step() got no closure. Either pass one (exact Alice; with the HF Trainer, use "
                "alice.integrations.hf.AliceTrainer, which passes it), or, for training loops that "
                "call step() themselves (HF Trainer, timm, GradScaler, accumulation by the loop), build "
                "the optimizer with Alice(..., closure_free=True), an approximation documented in the "
                "README.\n" + CLOSURE_HELP
            )
        for i, group in enumerate(self.param_groups):  # schedulers and users may have changed them
            _schedule.check_group(group, self.quick_steps, where=f"param group {i}: ")
        self._sync_state()
        self._warn_skips()
        self._in_step = True
        try:
            if self.closure_free:
                return self._consume(closure)
            refuse_framework_loops(closure, first=not self._closure_checked)
            self._closure_checked = True
            self._refuse_outside_gradients()
            return self._step(closure)
        finally:
            self._in_step = False

    def _begin(self) -> _Call:
        """Plan the next Alice step: its count, whether it samples, and its evaluations
        (the centre gathered from the parameters)."""
        buckets = self._state.buckets
        groups = [self.param_groups[b.group] for b in buckets]
        lrs = [_schedule.as_float(g["lr"]) for g in groups]
        for group, lr in zip(groups, lrs):
            if lr > 0 and group["lr0"] == 0:  # built at lr 0: bounds are relative to the first lr used
                group["lr0"] = lr
        advancing = any(lr > 0 for lr in lrs)
        call = self._calls + advancing
        sampling = advancing and self.is_sampling_step(call)
        paths = [dict(foreach=g["foreach"], fused=g["fused"]) for g in groups]
        ev = Evaluations(self._state, lrs, tensor_key(self.seed, call), paths)
        ev.gather()
        return _Call(groups, lrs, advancing, call, sampling, ev)

    def _evaluate(self, ev: Evaluations, closure: Callable[[], Any], evaluation: str) -> Any:
        self.evaluation = evaluation
        try:
            return ev.evaluate(closure)
        finally:
            self.evaluation = None

    def _active(self, c: _Call) -> list[list[bool]]:
        """Per bucket, the parameters that take part: a gradient in every evaluation, lr > 0."""
        active = [[t and lr > 0 for t in touched] for touched, lr in zip(c.ev.touched, c.lrs)]
        if c.advancing and not any(any(a) for a in active):
            raise ClosureError(
                "No parameter received a gradient: the closure must call loss.backward().\n" + CLOSURE_HELP
            )
        return active

    def _step(self, closure: Callable[[], Any]) -> Any:
        if not self._state.buckets:
            with torch.enable_grad():
                return closure()
        c = self._begin()
        replay = Replay(self.model) if c.sampling or self.model is not None else None
        losses = []
        try:
            if c.sampling:
                for sign, evaluation in ((1.0, "plus"), (-1.0, "minus")):
                    c.ev.move_to(sign)
                    losses.append(self._evaluate(c.ev, closure, evaluation))
                    c.ev.save_gradients(sign)
                    replay.rewind()  # the same dropout masks, the same buffers, next time
            c.ev.move_to(0.0)
            loss = self._evaluate(c.ev, closure, "center")
            losses.append(loss)
            active = self._active(c)
        except BaseException:
            c.ev.abandon()
            if replay is not None:
                replay.rewind()  # the RNG streams too: the next step sees what this one saw
            raise
        c.ev.release_untouched()
        if not c.advancing:  # every lr is 0: one evaluation at nu, nothing changes
            c.ev.restore()
            if replay is not None:
                replay.rewind(rng=False)
            return loss
        self._update(c.ev, c.groups, active, losses, c.call, c.sampling, replay)
        return loss

    # -- closure-free mode --------------------------------------------------------

    @torch.no_grad()
    def _position(self, new: bool) -> None:
        """Put the parameters where the next gradient is needed (closure-free mode):
        plan a new Alice step (``new``) or return to the pending one's point."""
        if not self._state.buckets:
            return
        if new or self._pending is None:
            self._pending = self._begin()
            self._phase = "plus" if self._pending.sampling else "center"
        else:
            self._pending.ev.gather()  # edits made in eval mode become the centre
        self._pending.ev.move_to(_DIRECTION[self._phase])
        self._pending.ev.arm()
        self.evaluation = self._phase

    def _consume(self, closure: Callable[[], Any] | None) -> Any:
        """Closure-free ``step()``: take the gradient the loop computed at the current
        point, then move to the next point (a sampling step spans three calls)."""
        if not self._training:
            raise ClosureError("Alice is in eval mode (the parameters hold mu): call optimizer.train() "
                               "before training steps, optimizer.eval() before evaluating or saving.")
        if self._pending is None:
            self._position(new=True)
        c, loss = self._pending, None
        if closure is not None:
            with torch.enable_grad():
                loss = check_loss(closure())
            self._losses.append(loss)
        c.ev.collect()
        if self._phase != "center":
            c.ev.save_gradients(_DIRECTION[self._phase])
            self._phase = "minus" if self._phase == "plus" else "center"
            c.ev.move_to(_DIRECTION[self._phase])
            c.ev.arm()
            self.evaluation = self._phase
            return loss
        try:
            active = self._active(c)
        except ClosureError:
            c.ev.arm()
            raise
        if c.advancing:
            self._update(c.ev, c.groups, active, self._losses, c.call, c.sampling, None)
        else:
            c.ev.restore()
        self._losses = []
        self._position(new=True)
        return loss

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
                self._position(new=False)
        return self

    @torch.no_grad()
    def eval(self) -> Alice:
        """Closure-free mode: put the centre ``mu`` in the parameters, for evaluating or
        saving the model; :meth:`train` puts the evaluation point back."""
        if self.closure_free and self._training:
            self._training = False
            if self._pending is not None:
                self._pending.ev.restore()
            self.evaluation = None
        return self

    def _update(self, ev: Evaluations, groups, active, losses, call: int, sampling: bool, replay) -> None:
        """Average and move every run of active parameters, predicated on one device flag:
        the losses and every gradient sample finite. With a single run (the usual case)
        one compiled graph both decides and writes."""
        buckets = self._state.buckets
        device = buckets[0].device
        plan = []
        for b, group, act, path, sigma in zip(buckets, groups, active, ev.paths, ev.scales):
            scalars = _schedule.step_scalars(group, self.quick_steps)
            if scalars.sigma != sigma:  # closure-free: the lr changed since the points were set
                scalars = replace(scalars, sigma=sigma)
            for first, last in _runs(act, b.history):
                a, z = b.starts[first], b.starts[last]
                grads = (b.grads[a:z], *((b.plus[a:z], b.minus[a:z]) if sampling else (None, None)))
                plan.append((b, first, last, grads, scalars, path))
        ok = losses_finite(losses, device)
        agree = _dist.world_size() > 1  # then the ranks agree on the decision before anything is written
        if len(plan) > 1 or agree:
            flags = [ok, *(samples_ok(*grads, scalars=scalars, **path).to(device, non_blocking=True)
                           for _b, _f, _l, grads, scalars, path in plan)]
            ok = _dist.agree_flag(torch.stack(flags).all())  # every rank takes the step, or none does
        check = len(plan) == 1 and not agree
        classes: dict[int, int] = {}
        for b, first, last, grads, scalars, path in plan:
            a, z = b.starts[first], b.starts[last]
            used = alice_(
                b.mu[a:z], *(b.buffers[key][a:z] for key in STATE_KEYS), *grads,
                n=b.counts[first], ok=ok.to(b.device, non_blocking=True),
                move=call > self.warmup_steps and (sampling or b.sampled[first]),
                scalars=scalars, out=b.held[a:z] if b.half else None, check=check,
                segments=b.segments(first, last), **path,
            )
            if check:
                ok = used
            b.counts[first:last].add_(used)
            new_class = classes.setdefault(b.history[first], self._state.new_class())
            for k in range(first, last):
                b.history[k] = new_class
                b.sampled[k] = b.sampled[k] or sampling
        ev.restore()
        if replay is not None and self.model is not None:
            replay.keep_if(ok)
        self._skipped.add_(~ok.to(self._skipped.device, non_blocking=True))
        if self._skipped_seen is not None:
            self._skipped_seen.copy_(self._skipped, non_blocking=True)
        self._calls = call

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the state, torch-style: ``"state"`` maps each trainable
        parameter's index to ``step`` (the steps it took part in), ``offset``
        (``nu - mu``), ``G, V, H, R`` (and ``mu`` for half-precision parameters);
        every ``"param_groups"`` entry carries the hyperparameters plus ``seed``,
        ``calls`` (the sampling schedule's count) and ``skipped_steps``, so that
        tools which keep only these two entries (``torch.distributed.checkpoint``)
        keep everything. ``"alice"`` repeats the optimizer-wide settings."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        self._sync_state()
        skipped = self.skipped_steps
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        param_groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed.update(seed=self.seed, calls=self._calls, skipped_steps=skipped)
            if self.closure_free:
                packed["phase"] = self._phase
            packed["params"] = [index[id(p)] for p in group["params"]]
            param_groups.append(packed)
        sampled = {id(p): b.sampled[k] for b in self._state.buckets for k, p in enumerate(b.params)}
        sampled.update((pid, r["sampled"]) for pid, r in self._state.stash.items())
        state = {
            index[id(p)]: {**{k: v.clone() for k, v in entry.items()}, "sampled": sampled[id(p)]}
            for p, entry in self.state.items()
        }
        if self.closure_free and self._pending is not None:
            self._save_pending(state, index, param_groups)
        state_dict = {
            "state": state,
            "param_groups": param_groups,
            "alice": {"format": _FORMAT, "quick_steps": self.quick_steps, "warmup_steps": self.warmup_steps},
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _save_pending(self, state: dict, index: dict, param_groups: list[dict]) -> None:
        """Closure-free mode: what the step in progress needs to go on exactly (the centre,
        the gradients already taken, the perturbation length of its points)."""
        c = self._pending
        for b, sigma in zip(self._state.buckets, c.ev.scales):
            param_groups[b.group]["pending_sigma"] = sigma
            extra = {"mu": b.held_views}
            if c.sampling and self._phase != "plus":
                extra["grad_plus"] = b.views(b.plus)
            if c.sampling and self._phase == "center":
                extra["grad_minus"] = b.views(b.minus)
            for key, views in extra.items():
                for p, view in zip(b.params, views):
                    state[index[id(p)]].setdefault(key, _dist.like_param(view.clone(), p))

    @torch.no_grad()
    def _load_pending(self, loaded) -> None:
        """Closure-free mode: resume the step in progress saved by :meth:`_save_pending`."""
        self._phase, self._pending = loaded.phase, self._begin()
        c = self._pending
        c.ev.scales = [loaded.sigmas[b.group] for b in self._state.buckets]
        for b in self._state.buckets:
            for k, p in enumerate(b.params):
                record = loaded.records.get(id(p), {})
                a, z = b.starts[k], b.starts[k + 1]
                if "mu" in record:  # the saved centre, whatever the model file holds
                    if b.half:
                        b.buffers["mu"][a:z].copy_(record["mu"].reshape(-1))
                    b.held[a:z].copy_(record["mu"].reshape(-1))
                for key in ("grad_plus", "grad_minus"):
                    if key in record:
                        b.ensure_sampling_buffers()
                        (b.plus if key == "grad_plus" else b.minus)[a:z].copy_(record[key].reshape(-1))
        c.ev.restore()  # the saved centre into the parameters, then (training) the point from it
        if self._training:
            c.ev.move_to(_DIRECTION[self._phase])
            c.ev.arm()
            self.evaluation = self._phase

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (or from ``torch.distributed.checkpoint``'s
        helpers, or the previous format). Everything is validated first; an invalid
        dict raises ``ValueError`` and changes nothing. Values are copied into the
        existing buffers, on each parameter's device and in its state dtype."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        loaded = parse_state_dict(state_dict, self.param_groups, self.quick_steps, self._state)
        for group, saved in zip(self.param_groups, loaded.groups):
            group.clear()
            group.update(saved)
        self.quick_steps, self.seed, self._calls = loaded.quick_steps, loaded.seed, loaded.calls
        self.warmup_steps = _schedule.warmup_steps(self.param_groups[0]["betas"][0])
        self._sync_state()
        fresh = self._state.new_class()
        for b in self._state.buckets:
            for k, p in enumerate(b.params):
                if id(p) in loaded.records:
                    AliceState.restore(b, k, loaded.records[id(p)])
                else:  # no entry: the state of a fresh optimizer, as torch loads it
                    AliceState.reset(b, k, fresh)
        training = {id(p) for b in self._state.buckets for p in b.params}
        self._state.stash = {pid: r for pid, r in loaded.records.items() if pid not in training}  # frozen: for later
        self._publish_state()
        for counter in (self._skipped, self._skipped_seen):
            if counter is not None:
                counter.fill_(loaded.skipped)
        self._warned = loaded.skipped
        if self.closure_free:
            self._load_pending(loaded)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _publish_state(self) -> None:
        """Point ``self.state`` at the per-parameter views (and the frozen parameters' records)."""
        self.state.clear()
        for p, entry in self._state.per_param():
            self.state[p] = entry
        params = {id(p): p for g in self.param_groups for p in g["params"]}
        for pid, record in self._state.stash.items():
            self.state[params[pid]] = {k: v for k, v in record.items() if k not in ("history", "sampled")}

