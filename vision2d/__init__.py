"""vision2d: hierarchical image backbones on a native 2D selective scan. Importing registers every model with timm."""
from . import models, ops  # noqa: F401  (models registers with timm on import)

__version__ = "0.1.0"
