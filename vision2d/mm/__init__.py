"""OpenMMLab integration: importing this package registers the zoo's backbones on mmengine's root ``MODELS``
registry, so mmdet and mmseg configs find them with ``custom_imports=dict(imports=['vision2d.mm'])``.

Needs mmengine, mmcv, mmdet / mmseg: ``python tools/install_openmmlab.py`` (see docs/openmmlab.md).
"""
from .backbone import (FAMILIES, Mamba2DBackbone, PlainMambaBackbone, TimmFeatureBackbone, VMambaBackbone,
                       load_backbone_weights)
from .optim import TimmNoWeightDecayConstructor
from .plainmamba_adapter import PlainMambaAdapter

__all__ = ["FAMILIES", "Mamba2DBackbone", "PlainMambaAdapter", "PlainMambaBackbone", "TimmFeatureBackbone",
           "TimmNoWeightDecayConstructor", "VMambaBackbone", "load_backbone_weights"]
