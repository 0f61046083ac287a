"""An mmengine optimizer-wrapper constructor that takes weight-decay exclusions from the backbone's timm model."""
from typing import Set

from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from .backbone import TimmFeatureBackbone


def no_weight_decay_names(model: nn.Module) -> Set[str]:
    """Full parameter names (as `model.named_parameters()` gives them) that the timm model of every
    `TimmFeatureBackbone` inside `model` lists in its `no_weight_decay()` and still holds."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, TimmFeatureBackbone):
            timm_model = module.model.model
            held = dict(timm_model.named_parameters())
            model_prefix = f"{prefix}.model.model." if prefix else "model.model."
            names |= {model_prefix + name for name in timm_model.no_weight_decay() if name in held}
    return names


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TimmNoWeightDecayConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus decay_mult 0 for every backbone parameter its timm model names in
    `no_weight_decay()` (e.g. Mamba2D's A logs), so configs need no per-model name lists. Other `paramwise_cfg`
    rules (norm / bias / flat decay multipliers, custom_keys) apply as usual."""

    def __call__(self, model: nn.Module):
        inner = model.module if is_model_wrapper(model) else model
        custom_keys = dict(self.paramwise_cfg.get("custom_keys", {}))
        for name in sorted(no_weight_decay_names(inner)):
            custom_keys[name] = dict(custom_keys.get(name, {}), decay_mult=0.0)
        if custom_keys:
            self.paramwise_cfg = dict(self.paramwise_cfg, custom_keys=custom_keys)
        return super().__call__(model)
