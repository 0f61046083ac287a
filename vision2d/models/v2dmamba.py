"""2DVMamba: VMamba v2 whose SS2D mixer scans each of its four cross-scan directions with the two-pass 2D selective
scan of 2DMamba (every row, then every column of the row results, so a pixel's state sums its whole quadrant) instead
of a 1D scan. Exact to the official classifiers (github AtlasAnalyticsLab/2DMamba @ 9fe12aa,
`2DVMamba/classification/models/vmamba.py` with `use_v2d=True`, forward type ``v05_noz``, ``ln2d`` norms); the
specification is docs/specs/v2dmamba.md.

The architecture is VMamba's (`vmamba.VMamba` with ``ssm_scan="2pass"``; same modules, keys and parameter counts),
the scan is `vision2d.ops.selective_scan_2pass`. No official weights are released.
"""
from typing import Dict

from timm.models import register_model
from timm.models._registry import generate_default_cfgs

from . import vmamba
from .vmamba import VMamba

__all__ = ["V2DMamba", "checkpoint_filter_fn"]


class V2DMamba(VMamba):
    """2DVMamba classifier: `VMamba` with the two-pass 2D scan in every SS2D (all VMamba arguments but ssm_scan)."""

    def __init__(self, **kwargs):
        if kwargs.setdefault("ssm_scan", "2pass") != "2pass":
            raise ValueError(f"V2DMamba always scans with '2pass', got ssm_scan={kwargs['ssm_scan']!r}")
        super().__init__(**kwargs)


def checkpoint_filter_fn(state_dict: Dict, model: V2DMamba) -> Dict:
    """Convert an official 2DVMamba checkpoint (or one of ours) to this model's keys.

    The official training script saves {"model", "model_ema" (EMA on by default), "optimizer", "lr_scheduler",
    "scaler", "config" (a pickled yacs CfgNode, read as plain data; its MODEL.VSSM.USE_V2D must be set), ...} with
    the official VSSM keys, the layout of VMamba's files, so `vmamba.checkpoint_filter_fn` converts it: it takes
    `model_ema` when present (timm's rule; the official evaluation reports both), else `model`. To load the live weights, as the official segmentation
    backbone does, pass {"model": checkpoint["model"]}. Raises ValueError naming the keys that do not fit.
    """
    return vmamba.checkpoint_filter_fn(state_dict, model)


def _create_v2dmamba(variant: str, pretrained: bool = False, **kwargs) -> V2DMamba:
    return vmamba._create_vmamba(variant, pretrained, model_cls=V2DMamba, **kwargs)


def _cfg(**kwargs) -> Dict:
    return vmamba._cfg(paper_ids="arXiv:2412.00678",
                       paper_name="2DMamba: Efficient State Space Model for Image Representation with Applications "
                                  "on Giga-Pixel Whole Slide Image Classification",
                       origin_url="https://github.com/AtlasAnalyticsLab/2DMamba", license="unknown", **kwargs)


# No official weights exist (the repository releases none): train one, or pass a file of the official training
# script with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "v2dmamba_tiny.in1k": _cfg(),
    "v2dmamba_small.in1k": _cfg(),
    "test_v2dmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def v2dmamba_tiny(pretrained: bool = False, **kwargs) -> V2DMamba:
    """2DVMamba-T (official vmambav2v_2d_tiny_224): VMamba-T with the 2D scan; 30.2M params."""
    args = dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), ssm_ratio=1.0, drop_path_rate=0.2)
    return _create_v2dmamba("v2dmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def v2dmamba_small(pretrained: bool = False, **kwargs) -> V2DMamba:
    """2DVMamba-S (official vmambav2_2d_small_224): VMamba-S with the 2D scan; 50.1M params."""
    args = dict(depths=(2, 2, 15, 2), dims=(96, 192, 384, 768), ssm_ratio=2.0, drop_path_rate=0.3)
    return _create_v2dmamba("v2dmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def test_v2dmamba(pretrained: bool = False, **kwargs) -> V2DMamba:
    """A tiny 2DVMamba for tests: every stage kind, ssm_ratio 1 as the tiny model; 0.28M params with a 1000-class
    head. The parity fixture's official model is test_v2dmamba(dims=(8, 16, 32, 64))."""
    args = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 64), ssm_ratio=1.0)
    return _create_v2dmamba("test_v2dmamba", pretrained, **dict(args, **kwargs))
