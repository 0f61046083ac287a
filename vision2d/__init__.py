"""vision2d: hierarchical image backbones on native 2D state-space scans. Importing registers every model with timm."""
import fnmatch

import timm

from . import checkpoint, models, ops  # noqa: F401  (models registers with timm on import)

__version__ = "0.1.0"


def list_models(filter: str = "*") -> list:
    """Sorted names of the timm models that vision2d registers (every family), optionally matching a wildcard."""
    return sorted(name for name in timm.list_models(filter)
                  if timm.models.model_entrypoint(name).__module__.startswith(__name__ + "."))
