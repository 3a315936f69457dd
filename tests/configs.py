"""The tables the tests loop over, kept apart from the tests that read them (the
pattern of torch's ``common_optimizers.py`` and optax's ``alias_test.py``).

* ``CONFIGS``: Alice's configurations, ``Config(desc, kwargs, lr_at)``; the parity
  tests run each on every path of ``PATHS``, the checkpoint tests resume each.
* ``ERRORS``: misuse and where it is refused, ``Error(kwargs, error, regex, at, call)``:
  at ``"construction"`` ``Alice(params, **kwargs)`` raises; at ``"add_param_group"``
  a group with the values ``kwargs`` is refused; at ``"step"`` an Alice built with
  ``kwargs`` refuses ``call(opt, model, x, y)`` (a bad closure, or a group edited
  between steps as a scheduler or the user would) before anything changes.
* ``LOAD_ERRORS``: saved state dicts edited to be wrong, ``LoadError(desc, edit,
  regex)``: ``load_state_dict`` refuses each with a ``ValueError`` matching ``regex``.
"""

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from alice import ClosureError, LoopError
from helpers import closure_for, mse

LR = 1e-2  # the lr of every configuration (the bounds below are set against it)


@dataclass(frozen=True, eq=False)  # hashed by identity: the parity tests cache a run per config
class Config:
    desc: str
    kwargs: dict
    lr_at: dict = field(default_factory=dict)  # {step: new lr, set before that step}


CONFIGS = [
    Config("default", {}),
    Config("hess_zero", dict(hess_comp="zero")),
    Config("hess_rms", dict(hess_comp="rms")),
    Config("no_glass", dict(grad_glass=False)),
    Config("fixed", dict(limit_method="fixed")),
    Config("fixed_bounds", dict(limit_method="fixed", lr_min=0.002, lr_max=0.015)),
    Config("sgdm_bounds", dict(limit_method="sgdm", lr_min=0.6, lr_max=1.0)),
    Config("adam_bounds", dict(lr_min=0.004, lr_max=0.03)),
    Config("quick0", dict(quick_steps=0)),
    Config("quick5", dict(quick_steps=5)),
    Config("w1", dict(w1=0.01)),
    Config("w2", dict(w2=0.3)),
    Config("w1_w2_rms", dict(w1=0.005, w2=0.3, hess_comp="rms")),
    Config("phi_omega", dict(phi=0.3, omega=0.7)),
    Config("weight_decay", dict(weight_decay=0.5)),
    Config("weight_decay_w2_lr_halves", dict(weight_decay=0.2, w2=0.3), lr_at={60: LR / 2}),
    Config("betas_0.8_0.99", dict(betas=(0.8, 0.99))),
    Config("betas_0.95_0.999", dict(betas=(0.95, 0.999), quick_steps=5)),
    Config("lr_halves_scaled", dict(lr_min=0.004), lr_at={60: LR / 2}),
    Config("lr_halves_unscaled", dict(lr_min=0.004, scale_bounds_with_lr=False), lr_at={60: LR / 2}),
    Config("lr_changes_sgdm_rms", dict(limit_method="sgdm", lr_min=0.6, lr_max=1.0, hess_comp="rms"),
           lr_at={60: LR / 2, 150: LR * 1.5}),
]
FUSED_CONFIGS = ("default", "adam_bounds", "lr_halves_scaled")  # these share one compiled graph
PATHS = {"foreach_default": {}, "single_tensor": dict(foreach=False), "fused": dict(fused=True)}


class Error(NamedTuple):
    kwargs: dict
    error: type
    regex: str
    at: str = "construction"
    call: Callable | None = None  # at "step": what is done with (opt, model, x, y)


def _step_with_group(**values):
    """A step after ``values`` were written into group 0."""

    def call(opt, model, x, y):
        opt.param_groups[0].update(values)
        opt.step(closure_for(opt, model, x, y))

    return call


def _step_without_closure(opt, model, x, y):
    opt.step()


def _step_returning_none(opt, model, x, y):
    opt.step(lambda: None)


def _step_without_backward(opt, model, x, y):
    opt.step(lambda: mse(model, x, y))


def _step_whose_closure_raises(opt, model, x, y):
    def broken():
        raise KeyError("data loader failed")

    opt.step(broken)


def _step_inside_the_closure(opt, model, x, y):
    good = closure_for(opt, model, x, y)

    def reentrant():
        opt.step(good)
        return good()

    opt.step(reentrant)


_WEIGHT_DECAYS = [-0.1, float("nan"), float("inf"), "0.1", None, True]

ERRORS = [
    # every invalid value names the argument and the value
    Error(dict(lr=-1e-3), ValueError, r"lr: -0\.001"),
    Error(dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]: 1\.0"),
    Error(dict(betas=(0.9, 0.0)), ValueError, r"betas\[1\]: 0\.0"),
    Error(dict(betas=(0.9,)), ValueError, r"betas: \(0\.9,\)"),
    Error(dict(betas=(0.9, 0.5), quick_steps=3), ValueError, r"betas\[1\]: 0\.5.*beta3"),
    Error(dict(eps=0.0), ValueError, r"eps: 0\.0"),
    Error(dict(w1=-1.0), ValueError, r"w1: -1\.0"),
    Error(dict(w2=-0.1), ValueError, r"w2: -0\.1"),
    Error(dict(phi=2.0), ValueError, r"phi: 2\.0"),
    Error(dict(phi=0.0), ValueError, r"phi: 0\.0"),
    Error(dict(omega=0.0), ValueError, r"omega: 0\.0"),
    Error(dict(limit_method="lion"), ValueError, r"limit_method: 'lion'"),
    Error(dict(lr_min=-1.0), ValueError, r"lr_min: -1\.0"),
    Error(dict(lr_min=1.0, lr_max=0.5), ValueError, r"lr_max: 0\.5"),
    Error(dict(lr=1e-3, lr_min=1.0), ValueError, r"lr_max: None"),
    Error(dict(hess_comp="sqrt"), ValueError, r"hess_comp: 'sqrt'"),
    Error(dict(grad_glass=False, hess_comp="zero"), ValueError, r"grad_glass: False"),
    Error(dict(grad_glass="yes"), ValueError, r"grad_glass: 'yes'"),
    Error(dict(scale_bounds_with_lr=1), ValueError, r"scale_bounds_with_lr: 1"),
    Error(dict(quick_steps=-1), ValueError, r"quick_steps: -1"),
    Error(dict(quick_steps=1.5), ValueError, r"quick_steps: 1\.5"),
    Error(dict(lr=float("nan")), ValueError, r"lr: nan"),
    Error(dict(seed=-3), ValueError, r"seed: -3"),
    Error(dict(lr=torch.tensor([1e-3, 2e-3])), ValueError, r"lr: tensor"),
    *(Error(dict(weight_decay=bad), ValueError, "weight_decay", at)
      for at in ("construction", "add_param_group") for bad in _WEIGHT_DECAYS),
    Error(dict(omega=-1), ValueError, r"omega: -1", "add_param_group"),
    # a group's values are checked again when a step begins
    Error({}, ValueError, r"param group 0: Invalid lr: -0\.001", "step", _step_with_group(lr=-1e-3)),
    Error({}, ValueError, r"param group 0: Invalid lr: nan", "step", _step_with_group(lr=float("nan"))),
    Error({}, ValueError, r"param group 0: Invalid eps: -1\.0", "step", _step_with_group(eps=-1.0)),
    Error({}, ValueError, r"param group 0: Invalid hess_comp: 'bad'", "step", _step_with_group(hess_comp="bad")),
    Error({}, ValueError, r"param group 0: Invalid weight_decay: -0\.1", "step", _step_with_group(weight_decay=-0.1)),
    # closures: the message says what to pass, and both ways when there is none
    Error({}, ClosureError, r"closure that re-evaluates the model.*loss\.backward\(\)", "step", _step_without_closure),
    Error({}, ClosureError, r"closure_free=True", "step", _step_without_closure),
    Error({}, ClosureError, r"AliceTrainer", "step", _step_without_closure),
    Error({}, ClosureError, r"returned None", "step", _step_returning_none),
    Error({}, ClosureError, r"No parameter received a gradient", "step", _step_without_backward),
    Error({}, KeyError, r"data loader failed", "step", _step_whose_closure_raises),  # the closure's own error
    Error({}, LoopError, r"inside its own closure", "step", _step_inside_the_closure),
]


def error_id(case):
    return f"{case.at}-{case.regex}"


class LoadError(NamedTuple):
    desc: str
    edit: Callable[[dict], object]  # a state dict of a model trained 12 steps -> the one to load
    regex: str


def _edit(part, **values):
    """An edit that updates ``values`` in every param group, in parameter 0's state or in
    the "alice" entry (``part``)."""

    def edit(sd):
        targets = {"groups": sd["param_groups"], "state0": [sd["state"][0]], "alice": [sd["alice"]]}[part]
        for target in targets:
            target.update(values)
        return sd

    return edit


def _non_finite_G(sd):
    sd["state"][0]["G"] = torch.full_like(sd["state"][0]["G"], float("nan"))
    return sd


LOAD_ERRORS = [
    LoadError("not a dict", lambda sd: "not a dict", "expected a dict"),
    LoadError("non-finite G", _non_finite_G, "'G' of parameter id 0 holds non-finite"),
    LoadError("V a list", _edit("state0", V=[1.0]), "'V' of parameter id 0 is a list"),
    LoadError("negative step", _edit("state0", step=torch.tensor(-1.0)),
              r"step of parameter id 0 is -1 \(must be an integer >= 0\)"),
    LoadError("step past calls", _edit("state0", step=torch.tensor(13.0)),
              "step of parameter id 0 is 13, more than the 12"),
    LoadError("fractional calls", _edit("groups", calls=2.5), r"calls is 2\.5"),
    LoadError("more skips than calls", _edit("groups", skipped_steps=20, calls=15),
              "skipped_steps is 20 but only 15 steps"),
    LoadError("negative eps", _edit("groups", eps=-1.0), "param group 0: Invalid eps: -1.0"),
    *(LoadError(f"lr0 {value!r}", _edit("groups", lr0=value), "Invalid lr0")
      for value in (float("nan"), float("inf"), None, "0.01", -1.0)),
    LoadError("fractional quick_steps", _edit("alice", quick_steps=2.5), r"Invalid quick_steps: 2\.5"),
    LoadError("format 0", _edit("alice", format=0), "format is 0"),
    LoadError("format 3", _edit("alice", format=3), "format is 3"),
    LoadError("format 'two'", _edit("alice", format="two"), "format is 'two'"),
    LoadError("meta G", _edit("state0", G=torch.empty(8, 4, device="meta")), "'G' of parameter id 0 is a meta"),
    LoadError("meta step", _edit("state0", step=torch.empty((), device="meta")), "step of parameter id 0 is"),
]
