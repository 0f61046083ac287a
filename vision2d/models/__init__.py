"""Model families; importing registers each family's models with timm."""
from .mamba2d import Mamba2D

__all__ = ["Mamba2D"]
