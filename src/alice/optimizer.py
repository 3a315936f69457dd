"""``alice.Alice``: the optimizer class (bookkeeping only; the math is in ``_math``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import distributed as _dist
from . import schedule as _schedule
from ._rademacher import tensor_key
from .evaluation import CLOSURE_HELP, ClosureError, Evaluations, Replay, loss_finite
from .functional import alice_, samples_ok
from ._checkpoint import parse_state_dict
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
        w1, w2: L1 and L2 weights (default 0).
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
        seed: int | None = None,
        model: torch.nn.Module | None = None,
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
            foreach=foreach, fused=fused,
        )
        _schedule.check_group(defaults, quick_steps)
        self.quick_steps = quick_steps
        self.warmup_steps = _schedule.warmup_steps(defaults["betas"][0])
        self.seed = seed
        self.model = model
        self._init_counters()
        super().__init__(params, defaults)
        self._sync_state()

    def _init_counters(self) -> None:
        self._calls = 0  # calls of step() that advanced the schedule
        self._state = AliceState()
        self._skipped: Tensor | None = None  # on the first bucket's device
        self._skipped_seen: Tensor | None = None  # a host copy, refreshed without waiting
        self._warned = 0
        self._in_step = False

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
                "seed": self.seed, "param_groups": self.param_groups, "state_dict": self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(defaults=state["defaults"], model=state["model"], quick_steps=state["quick_steps"],
                             seed=state["seed"], param_groups=state["param_groups"])
        self.warmup_steps = _schedule.warmup_steps(self.defaults["betas"][0])
        self._init_counters()
        super().__setstate__({"state": {}, "param_groups": self.param_groups})
        self._sync_state()
        self.load_state_dict(state["state_dict"])

    # -- state ------------------------------------------------------------------

    def _sync_state(self) -> None:
        """Rebuild the flat buffers if the trainable parameters changed, and point
        ``self.state`` at their per-parameter views."""
        if not self._state.sync(self.param_groups) and self.state:
            return
        self._publish_state()
        if self._state.buckets and self._skipped is None:
            self._skipped = torch.zeros((), dtype=torch.int64, device=self._state.buckets[0].device)
            if self._skipped.device.type == "cuda":
                self._skipped_seen = torch.zeros((), dtype=torch.int64, pin_memory=True)

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
        if closure is None or not callable(closure):
            raise ClosureError(f"Alice.step() got closure={closure!r}.\n" + CLOSURE_HELP)
        for i, group in enumerate(self.param_groups):  # schedulers and users may have changed them
            _schedule.check_group(group, self.quick_steps, where=f"param group {i}: ")
        self._sync_state()
        self._warn_skips()
        self._refuse_outside_gradients()
        self._in_step = True
        try:
            return self._step(closure)
        finally:
            self._in_step = False

    def _step(self, closure: Callable[[], Any]) -> Any:
        buckets = self._state.buckets
        if not buckets:
            with torch.enable_grad():
                return closure()
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
        replay = Replay(self.model) if sampling or self.model is not None else None
        losses = []
        try:
            if sampling:
                for sign in (1.0, -1.0):
                    ev.move_to(sign)
                    losses.append(ev.evaluate(closure))
                    ev.save_gradients(sign)
                    replay.rewind()  # the same dropout masks, the same buffers, next time
            ev.move_to(0.0)
            loss = ev.evaluate(closure)
            losses.append(loss)
            active = [[t and lr > 0 for t in touched] for touched, lr in zip(ev.touched, lrs)]
            if advancing and not any(any(a) for a in active):
                raise ClosureError(
                    "No parameter received a gradient: the closure must call loss.backward().\n" + CLOSURE_HELP
                )
        except BaseException:
            ev.restore()
            if replay is not None:
                replay.rewind(rng=False)
            raise
        ev.release_untouched()
        if not advancing:  # every lr is 0: one evaluation at nu, nothing changes
            ev.restore()
            if replay is not None:
                replay.rewind(rng=False)
            return loss
        self._update(ev, groups, active, losses, call, sampling, replay)
        return loss

    def _update(self, ev: Evaluations, groups, active, losses, call: int, sampling: bool, replay) -> None:
        """Average and move every run of active parameters, predicated on one device flag."""
        buckets = self._state.buckets
        device = buckets[0].device
        plan = []
        flags = [loss_finite(loss, device) for loss in losses]
        for b, group, act, path in zip(buckets, groups, active, ev.paths):
            scalars = _schedule.step_scalars(group, self.quick_steps)
            for first, last in _runs(act, b.history):
                a, z = b.starts[first], b.starts[last]
                grads = [b.grads[a:z], *((b.plus[a:z], b.minus[a:z]) if sampling else (None, None))]
                flags.append(samples_ok(*grads, scalars=scalars, **path).to(device, non_blocking=True))
                plan.append((b, first, last, grads, scalars, path))
        ok = flags[0] if len(flags) == 1 else torch.stack(flags).all()
        ok = _dist.agree_flag(ok)  # with several ranks: every rank takes the step, or none does
        oks = {device: ok}
        classes: dict[int, int] = {}
        for b, first, last, grads, scalars, path in plan:
            a, z = b.starts[first], b.starts[last]
            ok_here = oks.setdefault(b.device, ok.to(b.device, non_blocking=True))
            out = b.held[a:z] if b.half else None
            alice_(
                b.mu[a:z], *(b.buffers[key][a:z] for key in STATE_KEYS), *grads,
                n=b.counts[first], ok=ok_here, move=call > self.warmup_steps and (sampling or b.sampled[first]),
                scalars=scalars, out=out, segments=b.segments(first, last), **path,
            )
            b.counts[first:last].add_(ok_here)
            new_class = classes.setdefault(b.history[first], self._state.new_class())
            for k in range(first, last):
                b.history[k] = new_class
                b.sampled[k] = b.sampled[k] or sampling
        ev.restore()
        if replay is not None and self.model is not None:
            replay.keep_if(ok)
        self._skipped.add_(~ok)
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
            packed["params"] = [index[id(p)] for p in group["params"]]
            param_groups.append(packed)
        sampled = {id(p): b.sampled[k] for b in self._state.buckets for k, p in enumerate(b.params)}
        sampled.update((pid, r["sampled"]) for pid, r in self._state.stash.items())
        state = {
            index[id(p)]: {**{k: v.clone() for k, v in entry.items()}, "sampled": sampled[id(p)]}
            for p, entry in self.state.items()
        }
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
        for b in self._state.buckets:
            for k, p in enumerate(b.params):
                if id(p) in loaded.records:
                    AliceState.restore(b, k, loaded.records.pop(id(p)))
        self._state.stash = loaded.records  # frozen parameters' state, kept for when they train
        self._publish_state()
        for counter in (self._skipped, self._skipped_seen):
            if counter is not None:
                counter.fill_(loaded.skipped)
        self._warned = loaded.skipped
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

