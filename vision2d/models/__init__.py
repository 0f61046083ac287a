"""Model families; importing registers each family's models with timm."""
from .grootv import GrootV
from .mamba2d import Mamba2D
from .vmamba import VMamba

__all__ = ["GrootV", "Mamba2D", "VMamba"]
