"""Model families; importing registers each family's models with timm."""
from .grootv import GrootV
from .localmamba import LocalMamba
from .mamba2d import Mamba2D
from .msvmamba import MSVMamba
from .plainmamba import PlainMamba
from .spatial_mamba import SpatialMamba
from .v2dmamba import V2DMamba
from .vmamba import VMamba

__all__ = ["GrootV", "LocalMamba", "Mamba2D", "MSVMamba", "PlainMamba", "SpatialMamba", "V2DMamba", "VMamba"]
