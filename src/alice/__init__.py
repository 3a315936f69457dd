"""Alice: the optimizer of "Curvature in the Looking-Glass" (arXiv 2411.16914) for PyTorch."""

from .functional import alice_
from .optimizer import PRESETS, Alice, ClosureError

__all__ = ["Alice", "ClosureError", "PRESETS", "alice_", "__version__"]
__version__ = "0.1.0"
