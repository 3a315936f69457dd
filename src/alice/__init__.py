"""Alice: the optimizer of "Curvature in the Looking-Glass" (arXiv 2411.16914) for PyTorch.

``import alice`` loads the core only; :func:`probe` and ``alice.diagnostics`` load on use.
"""

from .errors import ClosureError, LoopError
from .functional import alice_
from .optimizer import PRESETS, Alice
from .param_groups import param_groups_for_weight_decay
from .state import AliceState

__all__ = ["Alice", "AliceState", "ClosureError", "LoopError", "PRESETS", "alice_", "param_groups_for_weight_decay",
           "probe", "__version__"]
__version__ = "0.2.0"


def probe(*args, **kwargs):
    """The model-fit probe; see :func:`alice.diagnostics.probe` (imported on first use)."""
    from .diagnostics import probe as _probe

    return _probe(*args, **kwargs)
