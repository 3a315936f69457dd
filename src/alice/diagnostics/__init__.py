"""Alice as a diagnostic probe: which curvature of the expected loss governs a model.

* :func:`diagnostics` -- live statistics of the last step, read from the optimizer's
  state (glass fraction, clip fractions, step ratio to Adam, ...): a flat dict of floats;
* :func:`probe` -- the model-fit probe: how well the linear, Hessian and glass models
  of the expected loss predict what a step along Alice's direction actually does;
* :func:`curvature` -- a curvature instrument for any model and optimizer: Hessian and
  glass samples at the current parameters, their terms along a step, with intervals;
* :class:`CurvatureMonitor` -- that instrument on a schedule during training, logged to
  TensorBoard, a callable (``wandb.log``) or JSON lines; :func:`plot_curvature` draws it;
* :func:`plot` -- heatmaps of per-layer statistics over training and the probe table
  (matplotlib, imported only when called).

See ``docs/diagnostics.md``.
"""

from .curvature import CurvatureReport, curvature
from .monitor import COSTS, CurvatureMonitor
from .probe import MODELS, ProbeReport, held_loss, probe
from .stats import KEYS, PER_PARAM_KEYS, diagnostics, param_names


def plot(*args, **kwargs):
    """Draw diagnostics over training and/or a probe table; see :func:`alice.diagnostics.plots.plot`."""
    from .plots import plot as _plot

    return _plot(*args, **kwargs)


def plot_curvature(*args, **kwargs):
    """Draw curvature-monitor readings over training; see :func:`alice.diagnostics.plots.plot_curvature`."""
    from .plots import plot_curvature as _plot_curvature

    return _plot_curvature(*args, **kwargs)


__all__ = ["COSTS", "KEYS", "MODELS", "PER_PARAM_KEYS", "CurvatureMonitor", "CurvatureReport", "ProbeReport",
           "curvature", "diagnostics", "held_loss", "param_names", "plot", "plot_curvature", "probe"]
