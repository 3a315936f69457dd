"""Alice: the optimizer of "Curvature in the Looking-Glass" (arXiv 2411.16914) for PyTorch."""

from .diagnostics import probe
from .evaluation import ClosureError
from .functional import alice_
from .optimizer import PRESETS, Alice
from .param_groups import param_groups_for_weight_decay
from .state import AliceState

__all__ = ["Alice", "AliceState", "ClosureError", "PRESETS", "alice_", "param_groups_for_weight_decay", "probe", "__version__"]
__version__ = "0.2.0"
