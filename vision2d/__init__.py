"""vision2d: hierarchical image backbones on native 2D state-space scans. Importing registers every model with timm."""
import fnmatch

import timm
import torch._functorch.config

from . import checkpoint, models, ops  # noqa: F401  (models registers with timm on import)

# Training under torch.compile with dynamic shapes (dynamic=True, or the default's recompile at a second input size):
# PyTorch 2.14's Inductor cannot order the symbolic strides of a view that the forward graph saves for backward
# ("cannot determine truth value of Relational", pytorch/pytorch#185510), and every block that runs a convolution on a
# permuted channels-last map saves one. With this flag the partitioner saves the view's base and recomputes the view
# (free) in backward instead. It is process-wide and changes no result; docs/timm.md ("Dynamic shapes") has the details.
torch._functorch.config.recompute_views = True

__version__ = "0.1.0"


def list_models(filter: str = "*") -> list:
    """Sorted names of the timm models that vision2d registers (every family), optionally matching a wildcard."""
    return sorted(name for name in timm.list_models(filter)
                  if timm.models.model_entrypoint(name).__module__.startswith(__name__ + "."))
