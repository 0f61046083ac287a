"""MSVMamba (v1): VMamba's v1 skeleton (4x4 patch embedding, patch merging) whose SS2D mixer scans the map once at full
resolution (row-major) and, as one sequence, three times over a stride-2 copy (reversed row-major, column-major,
reversed column-major, the state carried from segment to segment), upsamples that back bilinearly and gates the sum
with squeeze-excitation; each block adds a convolutional FFN. Exact to the official classifiers (github
YuHengsss/MSVMamba, main branch, `classification/models/vmamba.py` with the `ms_vssm` configs: sscore_type
``multiscale_4scan_12``, every stage multi-scale, ConvFFN and SE).

Tensors inside stages are channels-last (B, H, W, C); returned features are NCHW. Both scans run on `selective_scan`
with index-map orders (`multiscale_scan_order`: three segments over the small map, read three times, not copied).
"""
import re
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath
from timm.models import build_model_with_cfg, register_model, register_notrace_module
from timm.models._registry import generate_default_cfgs

from ..layers import DepthwiseConv2d, Linear, derived, linear
from ..ops import selective_scan
from ..ops.scan_orders import multiscale_scan_order
from .localmamba import MergingVMamba, block_dims_and_rates, convert_state_dict
from .localmamba import _rename_official_key as _rename_v1_skeleton_key
from .vmamba import SS2D, add_residual, overwritable, released_checkpoint_globals

__all__ = ["MSVMamba", "checkpoint_filter_fn"]

LOW, FULL = 0, 1  # index of each branch's scan parameters (official order: the downsampled branch first)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation on channels-last maps (official SEModule): x * sigmoid(fc2(ReLU(fc1(mean over pixels of
    x)))), both linears without bias; (B, H, W, C) in and out, the product written into x where autograd does not
    need it (`overwritable`: a fresh buffer of the map's size page-faults anew; 1 thread, batch 16, MSVMamba-T's
    stage-1 product: ~38 ms of faults)."""

    def __init__(self, channels: int, reduction: int = 8, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False, **dd)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((1, 2)))))).view(x.shape[0], 1, 1, x.shape[3])
        return x.mul_(gate) if overwritable(x) else x * gate


@register_notrace_module  # torch.fx (timm's feature extraction) keeps the mixer whole: it reshapes by input size
class MultiScaleSS2D(SS2D):
    """MSVMamba's SS2D; (B, H, W, C) in and out.

    in_proj (no bias) to x and a gate z; full branch: depthwise 3x3 conv -> SiLU -> row-major scan; low branch:
    depthwise 7x7 stride-2 conv of the same x -> SiLU -> the three-segment scan. Each scan output goes through the
    shared LayerNorm per token; the low branch's three segments are summed per pixel and upsampled (bilinear,
    align_corners=False) onto the full map; the sum -> squeeze-excitation -> times SiLU(z) -> out_proj (no bias).
    Scan parameters as VMamba's SS2D with K = 2 (LOW, FULL).

    The low branch's scan is one sequence of three copies of the low-resolution map that the scan op reads from one
    (periodic inputs: its order covers 3 h w positions, the inputs h w); x_proj runs once per pixel.
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, conv_bias: bool = True,
                 se_reduction: int = 8, device=None, dtype=None):
        super().__init__(dim, d_state=d_state, ssm_ratio=ssm_ratio, conv_bias=conv_bias, num_directions=2,
                         device=device, dtype=dtype)
        dd = dict(device=device, dtype=dtype)
        E = self.d_inner
        self.in_proj = Linear(dim, 2 * E, bias=False, **dd)  # x and the gate z
        self.conv_low = DepthwiseConv2d(E, 7, stride=2, bias=conv_bias, activation="silu", **dd)
        self.se = SqueezeExcite(E, se_reduction, **dd)

    def branch_parameters(self) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                                         Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The scan parameters of the LOW and FULL branches, each (x_proj weight (R + 2N, E), A (1, E, N), D (1, E),
        delta_bias (1, E), dt_proj weight (1, E, R)); A, D and delta_bias from `scan_constants`."""
        A, D, delta_bias = self.scan_constants()
        low = (self.x_proj_weight[LOW], A[LOW:LOW + 1], D[LOW:LOW + 1], delta_bias[LOW:LOW + 1],
               self.dt_projs_weight[LOW:LOW + 1])
        full = (self.x_proj_weight[FULL], A[FULL:FULL + 1], D[FULL:FULL + 1], delta_bias[FULL:FULL + 1],
                self.dt_projs_weight[FULL:FULL + 1])
        return low, full

    @torch.jit.unused
    def eval_branch_parameters(self):
        """`branch_parameters`, kept while the parameters are unchanged where no gradient is recorded (`derived`: an
        eval forward then skips its slices and constants, ~1 ms of Python per MSVMamba-T forward)."""
        return derived(self, "branch_parameters", self.branch_parameters, self.A_logs, self.Ds, self.dt_projs_bias,
                       self.x_proj_weight, self.dt_projs_weight)

    def _scan(self, u: torch.Tensor, parameters: Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                       torch.Tensor],
              order: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scan with one branch's `parameters` (`branch_parameters`): u (batch, L, E) along `order` (1, s L) (None:
        storage order), a sequence of s copies of u (copy c at positions c L .. (c + 1) L - 1) read from u. Returns
        (batch, s L, E) by position."""
        R, N = self.dt_rank, self.d_state
        x_proj_weight, A, D, delta_bias, dt_proj_weight = parameters
        x_dbl = linear(u, x_proj_weight)  # (batch, L, R + 2N), once per pixel
        dts, Bs, Cs = x_dbl.unsqueeze(2).split([R, N, N], dim=-1)
        # the scan projects dts by dt_proj as it runs (delta (batch, L, 1, E) is never stored)
        return selective_scan(u, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True, order=order,
                              delta_proj_weight=dt_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, _ = x.shape
        E = self.d_inner
        # in_proj's two halves as two products: x dense, as the convolutions read it (a strided half is copied)
        weight = self.in_proj.weight
        x, z = linear(x, weight[:E]), linear(x, weight[E:])
        # SiLU(DWConv3x3(x)) and SiLU(DWConv7x7/2(x)); in-place sums on fresh results: fewer large allocations (each
        # one page-faults anew)
        full = self.conv(x).view(batch, H * W, E)
        low = self.conv_low(x)
        h, w = low.shape[1:3]
        low_parameters, full_parameters = (self.branch_parameters() if torch.jit.is_scripting()
                                           else self.eval_branch_parameters())
        y_low = self._scan(low.reshape(batch, h * w, E), low_parameters, multiscale_scan_order(h, w, device=x.device))
        # the shared LayerNorm per token of both branches (the low branch's functionally: each module runs once)
        y = self.out_norm(self._scan(full, full_parameters)).view(batch, H, W, E)
        y_low = F.layer_norm(y_low, (E,), self.out_norm.weight, self.out_norm.bias, self.out_norm.eps)
        y_low = y_low.view(batch, 3, h, w, E).sum(1).permute(0, 3, 1, 2)
        y = y.add_(F.interpolate(y_low, size=(H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1))
        return self.out_proj(self.se(y).mul_(F.silu(z, inplace=True)))


class ConvFFN(nn.Module):
    """fc1 (1x1) -> t + depthwise 3x3 conv(t) -> GELU -> fc2 (1x1), dropout after each fc; (B, H, W, C) in and out."""

    def __init__(self, dim: int, expansion: int = 2, drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = dim * expansion
        self.fc1 = Linear(dim, hidden, **dd)
        self.dwconv = DepthwiseConv2d(hidden, 3, activation="gelu", residual=True, **dd)  # GELU(t + DWConv3x3(t))
        self.fc2 = Linear(hidden, dim, **dd)
        self.drop1, self.drop2 = nn.Dropout(drop), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.dwconv(self.drop1(self.fc1(x)))))


class MSVSSBlock(nn.Module):
    """x = x + DropPath(MultiScaleSS2D(LN(x))); x = x + DropPath(ConvFFN(LN(x))); (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, ffn_drop: float = 0.0, device=None, dtype=None,
                 **mixer_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.mixer = MultiScaleSS2D(dim, **mixer_kwargs, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.ffn = ConvFFN(dim, drop=ffn_drop, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual(x, self.drop_path1(self.mixer(self.norm1(x))))
        return add_residual(x, self.drop_path2(self.ffn(self.norm2(x))))


class MSVMamba(MergingVMamba):
    """MSVMamba classifier. Any input of at least 4x4 pixels works.

    feature_norms=True adds the official detection / segmentation backbone's `outnorm{i}` LayerNorm on every returned
    stage output.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (1, 2, 9, 2),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            ssm_conv_bias: bool = True,
            ffn_drop: float = 0.0,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            feature_norms: bool = False,
            device=None,
            dtype=None,
    ):
        nn.Module.__init__(self)  # VMamba's methods, not its layers
        dd = dict(device=device, dtype=dtype)
        blocks = [MSVSSBlock(dim, drop_path=rate, ffn_drop=ffn_drop, d_state=d_state, ssm_ratio=ssm_ratio,
                             conv_bias=ssm_conv_bias, **dd)
                  for dim, rate in block_dims_and_rates(depths, dims, drop_path_rate)]
        self._build(in_chans, num_classes, dims, depths, blocks, drop_rate, global_pool, feature_norms, **dd)


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official keys (VSSM): the v1 skeleton's (see localmamba) plus, per block,
# norm2.*, op.conv2d_b1.*, op.se.fc.{0,2}.weight (Linear), convFFN.{linear1,dwc,linear2}.* (1x1 convs for the linears).

_BLOCK_RENAMES = {"op.conv2d_b1": "mixer.conv_low", "op.se.fc.0": "mixer.se.fc1", "op.se.fc.2": "mixer.se.fc2",
                  "norm2": "norm2", "convFFN.linear1": "ffn.fc1", "convFFN.dwc": "ffn.dwconv",
                  "convFFN.linear2": "ffn.fc2"}
_OFFICIAL_BLOCK_PART = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(" + "|".join(map(re.escape, _BLOCK_RENAMES))
                                  + r")\.(weight|bias)$")
# the official evaluation (VMamba's main.py) validates both `model` and `model_ema`; as VMamba's files and timm's
# file loader, the EMA weights win when a file has both (the official mm backbone loads `model`: convert such a file
# with the live weights alone, e.g. {"model": checkpoint["model"]}, to get those)
_CHECKPOINT_WRAPPERS = ("model_ema", "state_dict", "model")


def _rename_official_key(key: str, value: torch.Tensor) -> Tuple[str, torch.Tensor]:
    match = _OFFICIAL_BLOCK_PART.match(key)
    if not match:
        return _rename_v1_skeleton_key(key, value)
    part = _BLOCK_RENAMES[match[3]]
    if match[4] == "weight" and part in ("ffn.fc1", "ffn.fc2"):
        value = value.flatten(1)  # 1x1 conv -> Linear
    return f"stages.{match[1]}.blocks.{match[2]}.{part}.{match[4]}", value


def checkpoint_filter_fn(state_dict: Dict, model: MSVMamba) -> Dict[str, torch.Tensor]:
    """Convert an official MSVMamba checkpoint or one of ours to this model's keys.

    Accepted: the official training / released classification files (`model_ema`, else `model`; their training config
    is a pickled yacs CfgNode, read as plain data: see `vmamba.released_checkpoint_globals`), raw state dicts (keys with
    or without `module.` / `_orig_mod.`), the official Mask R-CNN / UperNet checkpoints (the `backbone.*` part of their
    `state_dict`, with `outnorm{i}`; neck and heads dropped), and ours. A classifier checkpoint loaded into a model with
    `feature_norms` gets those norms at init (weight 1, bias 0).

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`.
    """
    return convert_state_dict(state_dict, model, _CHECKPOINT_WRAPPERS, _rename_official_key)


def _create_msvmamba(variant: str, pretrained: bool = False, **kwargs) -> MSVMamba:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (1, 2, 9, 2))))))
    with torch.serialization.safe_globals(released_checkpoint_globals()):  # the official files' pickled yacs config
        return build_model_with_cfg(
            MSVMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "unknown",
        "paper_ids": "arXiv:2405.14174", "paper_name": "Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space "
                                                      "Model",
        "origin_url": "https://github.com/YuHengsss/MSVMamba", **kwargs,
    }


# No hosted weights: download the official release (Google Drive, linked from the official README) and pass it, or
# its conversion by tools/convert_checkpoint.py, with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "msvmamba_nano.in1k": _cfg(),
    "msvmamba_micro.in1k": _cfg(),
    "msvmamba_tiny.in1k": _cfg(),
    "test_msvmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def msvmamba_nano(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-N (official vssm_nano_224_ms): 6.9M params, 0.9 GFLOPs, ImageNet-1k top-1 77.3."""
    args = dict(depths=(1, 2, 5, 2), dims=(48, 96, 192, 384), drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_nano", pretrained, **dict(args, **kwargs))


@register_model
def msvmamba_micro(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-M (official vssm_micro_224_ms): 11.9M params, 1.5 GFLOPs, ImageNet-1k top-1 79.8."""
    args = dict(depths=(1, 2, 5, 2), dims=(64, 128, 256, 512), drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_micro", pretrained, **dict(args, **kwargs))


@register_model
def msvmamba_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-T (official vssm_tiny_224_ms): 33.0M params, 4.6 GFLOPs, ImageNet-1k top-1 82.8."""
    args = dict(depths=(1, 2, 9, 2), dims=(96, 192, 384, 768), drop_path_rate=0.2)
    return _create_msvmamba("msvmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def test_msvmamba(pretrained: bool = False, **kwargs) -> MSVMamba:
    """A tiny MSVMamba for tests (the official parity fixture's model): odd low-resolution maps at every stage for
    non-square inputs; 0.18M params with a 1000-class head."""
    args = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))
    return _create_msvmamba("test_msvmamba", pretrained, **dict(args, **kwargs))
