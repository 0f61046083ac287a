"""Model families; importing registers each family's models with timm."""
from .mamba2d import Mamba2D
from .v2dmamba import V2DMamba
from .vmamba import VMamba

__all__ = ["Mamba2D", "V2DMamba", "VMamba"]
