"""Alice's state dict: packed, validated, loaded, with torch's hooks run as torch runs them.

:func:`pack` writes the dict (``Alice.state_dict``'s layout, documented there).
:func:`parse_state_dict` checks every entry (structure, types, shapes, finite
values, counts, hyperparameters) against the optimizer's parameters and
returns what to load, already on each parameter's device and in its state
dtype; it raises ``ValueError`` naming the first problem and changes nothing.
It reads the current layout (format 2: ``offset`` per parameter, counters in
every param group, as ``torch.distributed.checkpoint`` keeps them) and the
previous one (format 1: ``nu`` per parameter, counters under ``"alice"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _scalars
from . import distributed as _dist
from ._math import AVERAGES, state_dtype
from .state import AliceState

__all__ = ["FORMAT", "Loaded", "load", "pack", "parse_state_dict", "with_load_hooks", "with_save_hooks"]

FORMAT = 2
"""Version of the state dict layout (1: ``nu`` per parameter and counters under ``"alice"``)."""

_GROUP_COUNTERS = ("seed", "calls", "skipped_steps", "phase", "pending_sigma")


def with_save_hooks(opt, pack_fn) -> dict:
    """``pack_fn()`` between ``opt``'s state-dict pre- and post-hooks, as
    ``torch.optim.Optimizer.state_dict`` runs them."""
    for hook in opt._optimizer_state_dict_pre_hooks.values():
        hook(opt)
    state_dict = pack_fn()
    for hook in opt._optimizer_state_dict_post_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    return state_dict


def with_load_hooks(opt, state_dict: Any, load_fn) -> None:
    """``load_fn(state_dict)`` between ``opt``'s load pre- and post-hooks, as
    ``torch.optim.Optimizer.load_state_dict`` runs them (on a shallow copy of the dict)."""
    if isinstance(state_dict, dict):
        state_dict = state_dict.copy()
    for hook in opt._optimizer_load_state_dict_pre_hooks.values():
        result = hook(opt, state_dict)
        if result is not None:
            state_dict = result
    load_fn(state_dict)
    for hook in opt._optimizer_load_state_dict_post_hooks.values():
        hook(opt)


def pack(param_groups: list[dict], state: AliceState, per_param: dict, *, seed: int, calls: int, skipped: int,
         quick_steps: int, warmup_steps: int, pending=None) -> dict[str, Any]:
    """The state dict of an optimizer with these groups and ``state`` (``per_param`` is
    its ``opt.state``); ``pending``, a closure-free step in progress, adds what it needs."""
    index = {id(p): i for i, p in enumerate(p for g in param_groups for p in g["params"])}
    packed_groups = []
    for group in param_groups:
        packed = {k: v for k, v in group.items() if k != "params"}
        packed.update(seed=seed, calls=calls, skipped_steps=skipped)
        packed["params"] = [index[id(p)] for p in group["params"]]
        packed_groups.append(packed)
    sampled = {id(p): b.sampled[k] for b in state.buckets for k, p in enumerate(b.params)}
    sampled.update((pid, r["sampled"]) for pid, r in state.frozen.items())
    entries = {
        index[id(p)]: {**{k: v.clone() for k, v in entry.items()}, "sampled": sampled[id(p)]}
        for p, entry in per_param.items()
    }
    if pending is not None:
        pending.save(entries, index, packed_groups)
    return {
        "state": entries,
        "param_groups": packed_groups,
        "alice": {"format": FORMAT, "quick_steps": quick_steps, "warmup_steps": warmup_steps},
    }


def load(state: AliceState, loaded: Loaded) -> None:
    """Copy ``loaded``'s records into ``state``'s buckets (already rebuilt for the loaded
    groups); a trainable parameter without a record gets a fresh optimizer's state (as
    torch loads it); frozen parameters' records wait in ``state.frozen``."""
    fresh = state.new_cohort()
    for b in state.buckets:
        for k, p in enumerate(b.params):
            if id(p) in loaded.records:
                AliceState.restore(b, k, loaded.records[id(p)])
            else:
                AliceState.reset(b, k, fresh)
    training = {id(p) for b in state.buckets for p in b.params}
    state.frozen = {pid: r for pid, r in loaded.records.items() if pid not in training}


@dataclass
class Loaded:
    groups: list[dict]
    records: dict[int, dict]  # id(param) -> record for AliceState.restore
    quick_steps: int
    seed: int
    calls: int
    skipped: int
    phase: str  # closure-free mode: the evaluation the parameters were positioned for
    sigmas: list[float]  # closure-free mode: each group's perturbation length of the pending step


def _fail(message: str):
    raise ValueError(f"Invalid Alice state dict: {message}")


def _count(name: str, value: Any) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and value.device.type != "meta":
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        _fail(f"{name} is {value!r} (must be an integer >= 0)")
    return value


def _tensor(where: str, value: Any, p: Tensor) -> Tensor:
    """``value`` checked against parameter ``p``; for a sharded ``p``, this rank's part."""
    shape = tuple(p.shape)
    if not isinstance(value, Tensor):
        _fail(f"{where} is a {type(value).__name__}, not a tensor")
    if value.device.type == "meta":
        _fail(f"{where} is a meta tensor (it holds no values)")
    if not value.is_floating_point():
        _fail(f"{where} has dtype {value.dtype} (must be floating point)")
    if tuple(value.shape) != shape:
        _fail(f"{where} has shape {tuple(value.shape)} but the parameter has shape {shape}")
    value = _dist.shard_of(value, p)
    if not bool(torch.isfinite(value).all()):
        _fail(f"{where} holds non-finite values")
    return value


def _common(groups: list[dict], alice: dict, key: str, old_key: str | None = None):
    values = {g[key] for g in groups if key in g}
    if len(values) > 1:
        _fail(f"the param groups disagree on {key}: {sorted(values)}")
    if values:
        return values.pop()
    if old_key is not None and old_key in alice:
        return alice[old_key]
    _fail(f"no {key!r} in the param groups")


def parse_state_dict(state_dict: Any, param_groups: list[dict], quick_steps: int, state: AliceState) -> Loaded:
    """What ``state_dict`` holds for these ``param_groups``, validated (see the module doc)."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) \
            or not isinstance(state_dict.get("param_groups"), list):
        _fail("expected a dict with 'state' (a dict) and 'param_groups' (a list)")
    alice = state_dict.get("alice", {})
    if not isinstance(alice, dict):
        _fail(f"'alice' is a {type(alice).__name__}, not a dict")
    fmt = alice.get("format", 2 if "alice" not in state_dict or "steps" not in alice else 1)
    if isinstance(fmt, bool) or fmt not in (1, 2):
        _fail(f"format is {fmt!r} (this version reads formats 1 and 2)")
    old_format = fmt == 1
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        _fail(f"it has {len(saved_groups)} param groups but this optimizer has {len(param_groups)}")
    if "quick_steps" in alice:
        try:
            quick_steps = _scalars.check_quick_steps(alice["quick_steps"])
        except ValueError as err:
            _fail(str(err))
    groups, id_to_param = [], {}
    for i, (saved, group) in enumerate(zip(saved_groups, param_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            _fail(f"param group {i} is not a dict with a 'params' list")
        if len(saved["params"]) != len(group["params"]):
            _fail(f"param group {i} has {len(saved['params'])} parameters but this optimizer's has "
                  f"{len(group['params'])}")
        id_to_param.update(zip(saved["params"], group["params"]))
        loaded = {k: v for k, v in saved.items() if k not in ("params", *_GROUP_COUNTERS)}
        loaded.setdefault("weight_decay", 0.0)  # written before decoupled decay existed: none
        missing = [k for k in group if k not in loaded and k != "params"]
        if missing:
            _fail(f"param group {i} lacks {missing}")
        loaded.setdefault("lr0", _scalars.as_float(loaded["lr"]))
        try:
            _scalars.check_group(loaded, quick_steps, where=f"param group {i}: ")
        except ValueError as err:
            _fail(str(err))
        groups.append({**loaded, "params": group["params"]})
    seed = _count("seed", _common(saved_groups, alice, "seed", "seed"))
    calls = _count("calls", _common(saved_groups, alice, "calls", "steps"))
    skipped = _count("skipped_steps", _common(saved_groups, alice, "skipped_steps", "skipped_steps"))
    if skipped > calls:
        _fail(f"skipped_steps is {skipped} but only {calls} steps were called")

    records, cohorts = {}, {}
    for pid, entry in state_dict["state"].items():
        p = id_to_param.get(pid)
        if p is None:
            _fail(f"it has state for parameter id {pid!r}, which no param group lists")
        if not isinstance(entry, dict):
            _fail(f"the state of parameter id {pid!r} is not a dict")
        keys = ("nu", *AVERAGES) if old_format else ("step", "offset", *AVERAGES)
        missing = [k for k in keys if k not in entry]
        if missing:
            _fail(f"the state of parameter id {pid!r} lacks {missing}")
        dtype, local = state_dtype(p.dtype), _dist.local_tensor(p).detach()
        take = lambda key: _tensor(f"state {key!r} of parameter id {pid!r}", entry[key], p).to(  # noqa: E731
            device=local.device, dtype=dtype, copy=True)
        record = {key: take(key) for key in AVERAGES}
        if old_format:
            record["offset"] = take("nu") - local.to(dtype)
            step = calls
        else:
            record["offset"] = take("offset")
            step = _count(f"step of parameter id {pid!r}", entry["step"])
            if step > calls - skipped:
                _fail(f"step of parameter id {pid!r} is {step}, more than the {calls - skipped} steps taken "
                      f"(calls {calls} - skipped_steps {skipped})")
        if dtype != p.dtype:
            record["mu"] = take("mu") if "mu" in entry else local.to(dtype)
        elif "mu" in entry:  # closure-free mode saves the centre of every parameter
            record["mu"] = take("mu")
        for key in ("grad_plus", "grad_minus"):  # closure-free mode, saved within a sampling step
            if key in entry:
                record[key] = _tensor(f"state {key!r} of parameter id {pid!r}", entry[key], p).to(
                    device=local.device, dtype=p.dtype, copy=True)
        sampled = entry.get("sampled", step > 0)
        if not isinstance(sampled, bool):
            _fail(f"'sampled' of parameter id {pid!r} is {sampled!r} (must be a bool)")
        record.update(step=torch.tensor(float(step), dtype=torch.float64, device=p.device), sampled=sampled,
                      cohort=cohorts.setdefault((step, sampled), state.new_cohort()))
        records[id(p)] = record
    phase = saved_groups[0].get("phase", "center") if saved_groups else "center"
    if phase not in ("plus", "minus", "center"):
        _fail(f"phase is {phase!r} (must be 'plus', 'minus' or 'center')")
    sigmas = [s.get("pending_sigma", _scalars.as_float(g["lr"])) for s, g in zip(saved_groups, groups)]
    if any(not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0 for x in sigmas):
        _fail(f"pending_sigma is {sigmas!r} (must be finite numbers >= 0)")
    return Loaded(groups, records, quick_steps, seed, calls, skipped, phase, sigmas)

