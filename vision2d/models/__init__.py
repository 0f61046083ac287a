"""Model families; importing registers each family's models with timm."""
from .grootv import GrootV
from .mamba2d import Mamba2D
from .spatial_mamba import SpatialMamba
from .v2dmamba import V2DMamba
from .vmamba import VMamba

__all__ = ["GrootV", "Mamba2D", "SpatialMamba", "V2DMamba", "VMamba"]
