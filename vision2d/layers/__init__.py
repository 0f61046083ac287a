"""Blocks shared by model families."""
from .depthwise_conv import DepthwiseConv2d
from .derived import derived
from .linear import Linear, Mlp, linear
from .rope import apply_rope_2d, rope_2d_angles
from .star_relu import StarReLU

__all__ = ["DepthwiseConv2d", "Linear", "Mlp", "StarReLU", "derived", "linear", "apply_rope_2d", "rope_2d_angles"]
