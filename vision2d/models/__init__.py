"""Model families; importing registers each family's models with timm."""
from .mamba2d import Mamba2D
from .vmamba import VMamba

__all__ = ["Mamba2D", "VMamba"]
