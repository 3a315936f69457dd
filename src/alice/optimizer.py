"""``alice.Alice``: the optimizer class (bookkeeping only; the math is in ``_math``)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._math import HESS_COMPS, LIMIT_METHODS
from ._rademacher import tensor_key
from ._replay import Replay
from .functional import AliceHyper, alice_, perturb_, use_fused

__all__ = ["Alice", "ClosureError", "PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "glass": {"hess_comp": "zero", "grad_glass": True},
    "hessian": {"hess_comp": "abs", "grad_glass": False},
    "glass_abs": {"hess_comp": "abs", "grad_glass": True},
    "glass_rms": {"hess_comp": "rms", "grad_glass": True},
}
"""The paper's ablation: which curvature terms enter the step."""

_STATE_KEYS = ("nu", "G", "V", "H", "R")
_GLOBALS = ("steps", "seed", "skipped_steps", "quick_steps", "warmup_steps")
"""Optimizer-wide state, saved under ``state_dict()["alice"]``."""


class ClosureError(RuntimeError, TypeError, ValueError):
    """A missing closure, or one that does not return a loss or compute gradients."""


_CLOSURE_HELP = (
    "Alice.step() needs a closure that re-evaluates the model on the current batch, "
    "calls loss.backward() and returns the loss, e.g.\n"
    "    def closure():\n"
    "        optimizer.zero_grad()\n"
    "        loss = loss_fn(model(x), y)\n"
    "        loss.backward()\n"
    "        return loss\n"
    "    optimizer.step(closure)\n"
    "Alice evaluates it at perturbed parameters (three times on a sampling step)."
)


def _check_group(group: dict, quick_steps: int, where: str = "") -> None:
    """Raise ValueError naming the first invalid hyperparameter of ``group``
    (``where`` prefixes the message, e.g. with the group's index)."""

    def fail(name, value, rule):
        raise ValueError(f"{where}Invalid {name}: {value!r} (must be {rule})")

    def real(name, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            fail(name, value, "a finite real number")
        return value

    if "quick_steps" in group:
        raise ValueError(
            f"Invalid quick_steps in a param group: {group['quick_steps']!r} (quick_steps sets the "
            "global sampling schedule; pass it to the Alice constructor only)"
        )
    if real("lr", group["lr"]) <= 0:
        fail("lr", group["lr"], "> 0")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        fail("betas", betas, "a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0 < real(f"betas[{i}]", beta) < 1:
            fail(f"betas[{i}]", beta, "in (0, 1)")
    if (quick_steps + 1) * (1 - betas[1]) >= 1:
        fail(
            "betas[1]", betas[1],
            f"such that (quick_steps + 1) * (1 - beta2) < 1 with quick_steps={quick_steps}, so beta3 > 0",
        )
    if real("eps", group["eps"]) <= 0:
        fail("eps", group["eps"], "> 0")
    for name in ("w1", "w2", "lr_min"):
        if real(name, group[name]) < 0:
            fail(name, group[name], ">= 0")
    if group["phi"] is not None and not 0 < real("phi", group["phi"]) < 2:
        fail("phi", group["phi"], "in (0, 2) or None")
    if real("omega", group["omega"]) <= 0:
        fail("omega", group["omega"], "> 0")
    lr_max = 2 * group["lr"] if group["lr_max"] is None else real("lr_max", group["lr_max"])
    if lr_max < group["lr_min"]:
        fail("lr_max", group["lr_max"], f">= lr_min={group['lr_min']!r} (None means 2 * lr = {lr_max!r})")
    if group["limit_method"] not in LIMIT_METHODS:
        fail("limit_method", group["limit_method"], f"one of {LIMIT_METHODS}")
    if group["hess_comp"] not in HESS_COMPS:
        fail("hess_comp", group["hess_comp"], f"one of {HESS_COMPS}")
    for name in ("scale_bounds_with_lr", "grad_glass"):
        if not isinstance(group[name], bool):
            fail(name, group[name], "a bool")
    if not group["grad_glass"] and group["hess_comp"] == "zero":
        fail("grad_glass", False, 'True when hess_comp="zero" (the step would have no curvature at all)')


def _take(items: list, rows: list[int]) -> list:
    return [items[k] for k in rows]


def _state_dtype(p: Tensor) -> torch.dtype:
    """Optimizer state is kept in float32 for half-precision parameters."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


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
        lr: perturbation length :math:`\sigma` and the unit of the step bounds (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` for the averages of the gradient and of its
            square (default (0.9, 0.999)). The constructor's :math:`\beta_1` also sets
            the warm-up: the first ``floor(1/(1 - beta1))`` steps sample and do not move.
        eps: guard in denominators (default 1e-8).
        w1, w2: L1 and L2 weights (default 0).
        phi: fraction of the step taken by the centre :math:`\mu` (default ``1 - beta1``).
        omega: fraction of the step taken by the look-ahead :math:`\nu` (default 1).
        limit_method: ``"fixed"``, ``"sgdm"`` or ``"adam"`` (default): the unit of the bounds.
        lr_min, lr_max: lower and upper step bounds in that unit (defaults 0 and
            ``2 * lr`` of the group).
        scale_bounds_with_lr: bounds follow later changes of the group's lr (schedulers)
            by the same factor (default True).
        hess_comp: Hessian term ``"zero"``, ``"abs"`` (default) or ``"rms"``.
        grad_glass: include the glass term (default True).
        quick_steps: one-gradient steps between two sampling steps (default 3); global.
        seed: seed of the counter-based Rademacher signs (default: drawn once from
            torch's global RNG, so ``torch.manual_seed`` makes runs reproducible).
        model: optional module whose buffers (BatchNorm running statistics) must change
            as in one ordinary training step, from the evaluation at :math:`\nu`. Without
            it, a sampling step's three forward passes each update them (as in the
            authors' code). With it, a skipped (non-finite) step also leaves them untouched.
        foreach: use the multi-tensor path (default when ``fused`` is not set).
        fused: compile the update into one fused kernel per tensor with
            ``torch.compile`` (fastest; compiles on first use, falls back to foreach
            with a warning where no compiler is available).

    ``step(closure)`` needs a closure that re-evaluates the model, calls ``backward()``
    and returns the loss; it is called three times on a sampling step and once on a
    quick step, with the parameters at the evaluation point, and ``step`` returns the
    loss at :math:`\nu`. The global RNG streams are rewound between the three calls
    so that dropout masks agree. Steps whose loss or gradients are not finite change
    nothing but :attr:`skipped_steps`.

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
        lr: float = 1e-3,
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
        if isinstance(quick_steps, bool) or not isinstance(quick_steps, int) or quick_steps < 0:
            raise ValueError(f"Invalid quick_steps: {quick_steps!r} (must be an integer >= 0)")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Invalid seed: {seed!r} (must be an integer >= 0 or None)")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (must be a torch.nn.Module or None)")
        self.quick_steps = quick_steps
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps, w1=w1, w2=w2,
            phi=phi, omega=omega, limit_method=limit_method, lr_min=lr_min, lr_max=lr_max,
            scale_bounds_with_lr=scale_bounds_with_lr, hess_comp=hess_comp, grad_glass=grad_glass,
            foreach=foreach, fused=fused,
        )
        _check_group(defaults, quick_steps)
        self.warmup_steps = math.floor(1 / (1 - defaults["betas"][0]) + 1e-9)
        self.seed = seed
        self.model = model
        self.steps = 0  # the spec's n: steps taken (skipped steps excluded)
        self.skipped_steps = 0
        self._warned_nonfinite = False
        super().__init__(params, defaults)

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
            _check_group(group, self.quick_steps)
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ValueError(
                        f"Invalid parameter of dtype {p.dtype} and shape {tuple(p.shape)} "
                        "(Alice updates real floating-point parameters only)"
                    )
        except ValueError:
            self.param_groups.pop()
            raise
        group.setdefault("lr0", group["lr"])  # the lr the bounds are relative to

    def __getstate__(self) -> dict[str, Any]:  # pickle, deepcopy
        return {**super().__getstate__(), "alice": self._globals(), "model": self.model}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        glob, self.model = state.pop("alice", {}), state.pop("model", None)
        self.__dict__.update(glob)
        self._warned_nonfinite = False
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("lr0", group["lr"])

    def _globals(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in _GLOBALS}

    # -- schedule ---------------------------------------------------------------

    def is_sampling_step(self, n: int) -> bool:
        """Whether step ``n`` (1-based) evaluates three gradients (``True``) or one."""
        return n <= self.warmup_steps or n % (self.quick_steps + 1) == 0

    def _hyper(self, group: dict, n: int, move: bool) -> AliceHyper:
        beta1, beta2 = group["betas"]
        beta3 = 1 - (self.quick_steps + 1) * (1 - beta2)
        ramp = (n - 1) / n
        lr, lr0 = group["lr"], group["lr0"]
        lr_max = 2 * lr0 if group["lr_max"] is None else group["lr_max"]
        if group["scale_bounds_with_lr"]:
            tau1, tau2 = lr * group["lr_min"] / lr0, lr * lr_max / lr0
        else:
            tau1, tau2 = group["lr_min"], lr_max
        return AliceHyper(
            sigma=lr, b1=min(beta1, ramp), b2=min(beta2, ramp), b3=min(beta3, ramp),
            eps=group["eps"], w1=group["w1"], w2=group["w2"],
            phi=1 - beta1 if group["phi"] is None else group["phi"], omega=group["omega"],
            tau1=tau1, tau2=tau2, hess_comp=group["hess_comp"], grad_glass=group["grad_glass"],
            limit_method=group["limit_method"], move=move,
        )

    # -- the step ---------------------------------------------------------------

    def _trainable(self) -> list[tuple[int, dict, Tensor]]:
        """(global index, group, param) of every parameter that requires grad."""
        found, index = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    found.append((index, group, p))
                index += 1
        return found

    def _get_state(self, p: Tensor) -> dict[str, Tensor]:
        """The state of ``p``, or a fresh one (``nu = mu``, averages zero) that
        enters ``self.state`` only once a step with it succeeds."""
        if p in self.state:
            return self.state[p]
        dtype = _state_dtype(p)
        state = {"nu": p.detach().to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)}
        for key in _STATE_KEYS[1:]:  # G, V, H, R
            state[key] = torch.zeros(p.shape, dtype=dtype, device=p.device)
        return state

    def _evaluate(self, closure: Callable, params: list[Tensor]):
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise ClosureError("The closure returned None; it must return the loss.\n" + _CLOSURE_HELP)
        for p in params:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError(
                    f"Alice does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
                    "use dense embeddings (sparse=False)"
                )
        return loss, [p.grad for p in params]

    @staticmethod
    def _set(params: list[Tensor], values: list[Tensor]) -> None:
        if params:
            torch._foreach_copy_(params, values)

    def _abandon(self, params: list[Tensor], mus: list[Tensor], replay: Replay | None) -> None:
        """Undo a step that will not be taken: parameters back to ``mu``, and the
        model's buffers (with ``model=``) back to where the step found them."""
        self._set(params, mus)
        if replay is not None:
            replay.rewind(rng=False)

    def _batches(self, entries, params) -> list[tuple[dict, list[int], bool]]:
        """(group, rows of ``entries``, fused?) for every group with trainable parameters."""
        batches = []
        for group in self.param_groups:
            rows = [k for k, entry in enumerate(entries) if entry[1] is group]
            if rows:
                batches.append((group, rows, use_fused(group["fused"], _take(params, rows), group["foreach"])))
        return batches

    def _evaluations(self, closure, n, entries, params, nus, batches, replay):
        """Run the closure at ``nu + sigma z`` and ``nu - sigma z`` (sampling steps) and
        at ``nu``; returns the loss at ``nu``, its gradients, and the perturbed ones."""
        grads_pm = []
        if self.is_sampling_step(n):
            for direction in (1.0, -1.0):
                for group, rows, fused in batches:
                    perturb_(
                        _take(params, rows), _take(nus, rows),
                        [tensor_key(self.seed, n, entries[k][0]) for k in rows],
                        [direction * group["lr"]] * len(rows), fused=fused,
                    )
                grads_pm.append(self._evaluate(closure, params)[1])
                replay.rewind()  # the same dropout masks, the same buffers, next time
        self._set(params, nus)
        loss, grads = self._evaluate(closure, params)
        return loss, grads, grads_pm

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Take one Alice step; ``closure`` re-evaluates the model and returns the loss."""
        if closure is None or not callable(closure):
            raise ClosureError(f"Alice.step() got closure={closure!r}.\n" + _CLOSURE_HELP)
        entries = self._trainable()
        if not entries:
            with torch.enable_grad():
                return closure()
        for i, group in enumerate(self.param_groups):  # schedulers and users may have changed them
            _check_group(group, self.quick_steps, where=f"param group {i}: ")
        n = self.steps + 1
        params = [p for _, _, p in entries]
        states = [self._get_state(p) for p in params]
        nus = [s["nu"] for s in states]
        batches = self._batches(entries, params)
        mus = [p.detach().clone() for p in params]
        replay = Replay(self.model) if self.is_sampling_step(n) or self.model is not None else None
        try:
            loss, grads, grads_pm = self._evaluations(closure, n, entries, params, nus, batches, replay)
        except BaseException:
            self._abandon(params, mus, replay)
            raise

        # A parameter takes part only if every evaluation gave it a gradient.
        rows = [k for k, g in enumerate(grads) if g is not None and all(gs[k] is not None for gs in grads_pm)]
        if not rows:
            self._abandon(params, mus, replay)
            raise ClosureError("No parameter received a gradient: the closure must call loss.backward().\n" + _CLOSURE_HELP)
        if not self._all_finite(loss, [gs[k] for gs in (grads, *grads_pm) for k in rows]):
            self._abandon(params, mus, replay)
            self._skip(n, loss)
            return loss
        idle = sorted(set(range(len(params))) - set(rows))
        self._set(_take(params, idle), _take(mus, idle))

        self.steps = n
        for k in rows:
            self.state[params[k]] = states[k]
        taking_part = set(rows)
        for group, group_rows, fused in batches:
            group_rows = [k for k in group_rows if k in taking_part]
            alice_(
                _take(params, group_rows), _take(mus, group_rows), _take(grads, group_rows),
                *(_take([s[key] for s in states], group_rows) for key in _STATE_KEYS),
                *(_take(gs, group_rows) for gs in grads_pm) if grads_pm else (None, None),
                self._hyper(group, n, move=n > self.warmup_steps),
                foreach=group["foreach"], fused=fused,
            )
        return loss

    @staticmethod
    def _all_finite(loss: Any, grads: list[Tensor]) -> bool:
        """Whether the loss and all gradients are finite, with one host sync for the step."""
        if not isinstance(loss, Tensor):
            return math.isfinite(float(loss)) and Alice._all_finite(torch.zeros(()), grads)
        checks = [torch.isfinite(loss.detach()).all()]
        by_device: dict[torch.device, list[Tensor]] = {}
        for g in grads:
            if g.numel():
                by_device.setdefault(g.device, []).append(g)
        for gs in by_device.values():  # min and max are finite iff every element is
            checks.append(torch.stack([torch.stack(torch.aminmax(g)) for g in gs]).isfinite().all())
        return bool(torch.stack([c.to(checks[0].device) for c in checks]).all())

    def _skip(self, n: int, loss: Any) -> None:
        self.skipped_steps += 1
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"Alice skipped step {n}: the loss ({float(loss)!r}) or a gradient is not finite. "
                "Parameters and optimizer state are unchanged; skipped steps are counted in "
                "optimizer.skipped_steps. This warning is shown once.",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"alice"``: step count, seed, skipped steps and schedule."""
        state_dict = super().state_dict()
        state_dict["alice"] = self._globals()
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by :meth:`state_dict`; raises ``ValueError`` and
        changes nothing when it does not fit this optimizer's parameters."""
        if not isinstance(state_dict, dict) or "alice" not in state_dict:
            raise ValueError("Not an Alice state dict: the 'alice' entry (step count, seed, schedule) is missing")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"The state dict has {len(saved_groups)} param groups but this optimizer has {len(self.param_groups)}"
            )
        id_to_param = {}
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"Param group {g} has {len(saved['params'])} parameters in the state dict "
                    f"but {len(group['params'])} here"
                )
            id_to_param.update(zip(saved["params"], group["params"]))
        for pid, state in state_dict["state"].items():
            p = id_to_param.get(pid)
            if p is None:
                raise ValueError(f"The state dict has state for parameter id {pid!r}, which no param group lists")
            missing = [k for k in _STATE_KEYS if k not in state]
            if missing:
                raise ValueError(f"State of parameter id {pid!r} lacks {missing}: not an Alice state dict")
            for key in _STATE_KEYS:
                if tuple(state[key].shape) != tuple(p.shape):
                    raise ValueError(
                        f"State {key!r} of parameter id {pid!r} has shape {tuple(state[key].shape)} "
                        f"but the parameter has shape {tuple(p.shape)}"
                    )
        glob = state_dict["alice"]
        missing = [k for k in _GLOBALS if k not in glob]
        if missing:
            raise ValueError(f"The state dict's 'alice' entry lacks {missing}")
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        self.state.clear()
        for pid, state in state_dict["state"].items():
            p = id_to_param[pid]
            dtype = _state_dtype(p)
            self.state[p] = {
                k: state[k].to(device=p.device, dtype=dtype, memory_format=torch.contiguous_format, copy=True)
                for k in _STATE_KEYS
            }
        self.__dict__.update({key: int(glob[key]) for key in _GLOBALS})
