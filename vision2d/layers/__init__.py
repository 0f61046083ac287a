"""Blocks shared by model families."""
from .rope import apply_rope_2d, rope_2d_angles
from .star_relu import StarReLU

__all__ = ["StarReLU", "apply_rope_2d", "rope_2d_angles"]
