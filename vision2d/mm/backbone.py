"""mmdet / mmseg backbones built on the zoo's timm models (``features_only``), one registered class per family."""
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import safetensors.torch
import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.models._features import FeatureGetterNet
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import check_weights_model, read_weights_metadata
from ..models import grootv, localmamba, mamba2d, msvmamba, plainmamba, spatial_mamba, v2dmamba, vmamba
from ..unpickle import load_tensors


@dataclass(frozen=True)
class BackboneFamily:
    """A model family of the zoo as mm backbones see it."""
    models: Dict[str, str]  # mm ``arch`` -> timm model name
    checkpoint_filter_fn: Callable  # (state_dict, full timm model) -> timm state_dict; raises when it does not fit
    model_kwargs: Dict = field(default_factory=dict)  # extra timm model arguments of the mm backbone


FAMILIES = {
    "mamba2d": BackboneFamily(
        models={"nano": "mamba2d_nano", "tiny": "mamba2d_tiny", "small": "mamba2d_small", "test": "test_mamba2d"},
        checkpoint_filter_fn=mamba2d.checkpoint_filter_fn),
    "vmamba": BackboneFamily(  # feature_norms: the official MM_VSSM's outnorm{i} on every returned stage
        models={"tiny": "vmamba_tiny", "small": "vmamba_small", "base": "vmamba_base", "test": "test_vmamba"},
        checkpoint_filter_fn=vmamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
    "v2dmamba": BackboneFamily(  # the official 2DVMamba MM_VSSM: outnorm{i} on every returned stage, as VMamba's
        models={"tiny": "v2dmamba_tiny", "small": "v2dmamba_small", "test": "test_v2dmamba"},
        checkpoint_filter_fn=v2dmamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
    "spatial_mamba": BackboneFamily(  # feature_norms: the official Backbone_SpatialMamba's outnorm{i}
        models={"tiny": "spatial_mamba_tiny", "small": "spatial_mamba_small", "base": "spatial_mamba_base",
                "test": "test_spatial_mamba"},
        checkpoint_filter_fn=spatial_mamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
    "grootv": BackboneFamily(  # the official stage outputs after each level's norm, no extra norms
        models={"tiny": "grootv_tiny", "small": "grootv_small", "base": "grootv_base", "test": "test_grootv"},
        checkpoint_filter_fn=grootv.checkpoint_filter_fn),
    "localmamba": BackboneFamily(  # feature_norms: the official Backbone_LocalVSSM's outnorm{i}
        models={"tiny": "localmamba_tiny", "small": "localmamba_small", "test": "test_localmamba"},
        checkpoint_filter_fn=localmamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
    "msvmamba": BackboneFamily(  # feature_norms: the official MM_VSSM's outnorm{i}
        models={"nano": "msvmamba_nano", "micro": "msvmamba_micro", "tiny": "msvmamba_tiny", "test": "test_msvmamba"},
        checkpoint_filter_fn=msvmamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
    "plainmamba": BackboneFamily(  # a "stage" is a block; feature_norms: the official norm_layer{i} (ln1 on the last)
        models={"l1": "plainmamba_l1", "l2": "plainmamba_l2", "l3": "plainmamba_l3", "test": "test_plainmamba"},
        checkpoint_filter_fn=plainmamba.checkpoint_filter_fn, model_kwargs=dict(feature_norms=True)),
}


def _full_model_on_meta(model_name: str, **model_kwargs) -> torch.nn.Module:
    """The complete timm classifier with shapes but no storage: a cheap reference for stage counts and keys."""
    with torch.device("meta"):
        return timm.create_model(model_name, **model_kwargs)


def read_checkpoint(checkpoint: str, model_name: str) -> dict:
    """The dict in ``checkpoint``: a vision2d safetensors file (an error if tagged with a model other than
    ``model_name``) or a torch file read with `vision2d.unpickle.load_tensors` (no code from the file runs; training
    objects beside the weights are skipped)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"init_cfg checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        check_weights_model(read_weights_metadata(path), model_name, path)
        return safetensors.torch.load_file(path, device="cpu")
    checkpoint = load_tensors(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def load_backbone_weights(checkpoint: str, model_name: str, family: BackboneFamily) -> Dict[str, torch.Tensor]:
    """The weights of ``checkpoint`` (a vision2d safetensors file, or an official classifier, detector or segmentor
    checkpoint) in timm's keys for ``model_name``, classifier removed. Torch files are read with
    `vision2d.unpickle.load_tensors` (no code from the file runs; training objects beside the weights are skipped).
    The family's filter converts the keys and raises when any backbone key is missing, unexpected or mis-shaped; a
    vision2d file tagged with another model is an error."""
    reference = _full_model_on_meta(model_name, **family.model_kwargs)
    state_dict = family.checkpoint_filter_fn(read_checkpoint(checkpoint, model_name), reference)
    classifier_prefix = reference.pretrained_cfg["classifier"] + "."
    return {key: value for key, value in state_dict.items() if not key.startswith(classifier_prefix)}


class TimmFeatureBackbone(BaseModule):
    """A timm ``features_only`` model of one family as an mm backbone returning a tuple of NCHW feature maps.

    Args:
        arch: model size, a key of the family's ``models`` table (e.g. 'tiny').
        out_indices: stages whose outputs are returned (channels and strides as in the timm model's feature_info).
        frozen_stages: -1 trains everything; 0 freezes the stem; k > 0 freezes the stem and the first k stages.
        norm_eval: keep BatchNorm layers in eval mode while training (no effect on LayerNorm-only models).
        drop_path_rate: stochastic depth rate of the timm model.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a classifier checkpoint in ``init_weights``.
    """

    family: str  # key of FAMILIES, set by each registered subclass

    def __init__(self, arch: str = "tiny", out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, drop_path_rate: float = 0.0, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        models = FAMILIES[self.family].models
        if arch not in models:
            raise ValueError(f"{type(self).__name__}: unknown arch {arch!r}; choose one of {sorted(models)}")
        if init_cfg is not None and (init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg):
            raise ValueError(f"{type(self).__name__}: init_cfg must be dict(type='Pretrained', checkpoint=PATH), "
                             f"got {init_cfg}")
        self.model_name = models[arch]
        model_kwargs = FAMILIES[self.family].model_kwargs
        num_stages = len(_full_model_on_meta(self.model_name, **model_kwargs).feature_info)
        out_indices = tuple(out_indices)
        if not out_indices or list(out_indices) != sorted(set(out_indices)) or not all(
                isinstance(i, int) and 0 <= i < num_stages for i in out_indices):
            raise ValueError(f"{type(self).__name__}: out_indices must be distinct increasing stage indices in "
                             f"0..{num_stages - 1} for {self.model_name}, got {out_indices}")
        if not -1 <= frozen_stages <= out_indices[-1] + 1:
            raise ValueError(f"{type(self).__name__}: frozen_stages must be in -1..{out_indices[-1] + 1} (the stages "
                             f"built for out_indices={out_indices}), got {frozen_stages}")
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.model = timm.create_model(self.model_name, features_only=True, out_indices=out_indices,
                                       drop_path_rate=drop_path_rate, **model_kwargs)
        if not isinstance(self.model, FeatureGetterNet):
            raise TypeError(f"{self.model_name} must register feature_cfg feature_cls='getter' for mm backbones")
        self.feature_info = self.model.feature_info
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> tuple:
        return tuple(self.model(x))

    def init_weights(self):
        """Load ``init_cfg``'s checkpoint into the backbone (classifier dropped); without init_cfg keep timm's init."""
        if self.init_cfg is None:
            return
        checkpoint = self.init_cfg["checkpoint"]
        state_dict = load_backbone_weights(checkpoint, self.model_name, FAMILIES[self.family])
        result = self.model.model.load_state_dict(state_dict, strict=False)
        if result.missing_keys:
            raise ValueError(f"{checkpoint} lacks backbone weights of {self.model_name}: {result.missing_keys}")
        message = f"{type(self).__name__}: loaded {len(state_dict)} tensors of {self.model_name} from {checkpoint}"
        if result.unexpected_keys:
            message += f"; unused by out_indices={self.out_indices}: {result.unexpected_keys}"
        print_log(message, logger="current")
        self._is_init = True

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def _freeze_stages(self):
        """Put the stem (with the model's own parameters, e.g. a position embedding) and the first ``frozen_stages``
        stages in eval mode without gradients."""
        if self.frozen_stages < 0:
            return
        model = self.model.model
        stages_parent = model.feature_info[0]["module"].split(".")[0]
        frozen = [module for name, module in takewhile(lambda child: child[0] != stages_parent,
                                                       model.named_children())]
        frozen += [model.get_submodule(info["module"]) for info in model.feature_info[:self.frozen_stages]]
        for module in frozen:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad = False
        for parameter in model.parameters(recurse=False):
            parameter.requires_grad = False


@MODELS.register_module()
class Mamba2DBackbone(TimmFeatureBackbone):
    """Mamba2D (arch 'nano', 'tiny', 'small'; 'test' for tests) for mmdet and mmseg."""
    family = "mamba2d"


@MODELS.register_module()
class VMambaBackbone(TimmFeatureBackbone):
    """VMamba v2 (arch 'tiny', 'small', 'base'; 'test' for tests) for mmdet and mmseg: the official MM_VSSM, with a
    LayerNorm on every returned stage. An ImageNet classifier checkpoint starts those norms at weight 1, bias 0 (as
    the official backbone does); an official Mask R-CNN / UperNet checkpoint loads them with the rest."""
    family = "vmamba"


@MODELS.register_module()
class PlainMambaBackbone(TimmFeatureBackbone):
    """PlainMamba (arch 'l1', 'l2', 'l3'; 'test' for tests) as the official segmentation backbone: the maps of the
    blocks in out_indices (official: (5, 11, 17, 23) for L1/L2, (8, 17, 26, 35) for L3), all at stride 16, each
    through a LayerNorm (the last block's through the final norm), for UperNet without a neck. Stages are blocks here
    (frozen_stages=k freezes the patch and position embeddings and the first k blocks). The detection pyramid is
    `PlainMambaAdapter`."""
    family = "plainmamba"


@MODELS.register_module()
class SpatialMambaBackbone(TimmFeatureBackbone):
    """Spatial-Mamba (arch 'tiny', 'small', 'base'; 'test' for tests) for mmdet and mmseg: the official
    Backbone_SpatialMamba, with a LayerNorm on every returned stage (weight 1, bias 0 from a classifier checkpoint;
    loaded from an official Mask R-CNN / UperNet checkpoint). From a released classification file holding `model` and
    `model_ema`, `model` is loaded, as the official backbone does."""
    family = "spatial_mamba"


@MODELS.register_module()
class V2DMambaBackbone(TimmFeatureBackbone):
    """2DVMamba (arch 'tiny', 'small'; 'test' for tests) for mmseg and mmdet: the official MM_VSSM of 2DMamba's
    segmentation code, with a LayerNorm on every returned stage (weight 1, bias 0 from a classifier checkpoint). No
    official weights exist; an official training checkpoint loads its EMA weights (see
    `vision2d.models.v2dmamba.checkpoint_filter_fn`)."""
    family = "v2dmamba"


@MODELS.register_module()
class GrootVBackbone(TimmFeatureBackbone):
    """GrootV (arch 'tiny', 'small', 'base'; 'test' for tests) for mmdet and mmseg: the stage outputs after each
    stage's LayerNorm (the official `forward_features_seq_out`), strides 4 to 32. The repository publishes no
    detection or segmentation code or weights; a released classification file loads its `model_ema` weights (see
    `vision2d.models.grootv.checkpoint_filter_fn`)."""
    family = "grootv"


@MODELS.register_module()
class LocalMambaBackbone(TimmFeatureBackbone):
    """LocalVMamba (arch 'tiny', 'small'; 'test' for tests) for mmdet and mmseg: the official Backbone_LocalVSSM, with
    a LayerNorm on every returned stage (weight 1, bias 0 from a classifier checkpoint; loaded from an official Mask
    R-CNN checkpoint). Non-square inputs use the true inverse of the vertical scans, unlike the official code (see
    docs/models.md)."""
    family = "localmamba"


@MODELS.register_module()
class MSVMambaBackbone(TimmFeatureBackbone):
    """MSVMamba (arch 'nano', 'micro', 'tiny'; 'test' for tests) for mmdet and mmseg: the official MM_VSSM of MSVMamba,
    with a LayerNorm on every returned stage (weight 1, bias 0 from a classifier checkpoint; loaded from an official
    Mask R-CNN / UperNet checkpoint). A classification file holding both `model` and `model_ema` gives `model_ema`
    (see `vision2d.models.msvmamba.checkpoint_filter_fn`)."""
    family = "msvmamba"
