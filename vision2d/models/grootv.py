"""GrootV: hierarchical backbone whose token mixer is a state-space scan over a tree (GrootVL, Xiao et al. 2024).
Exact to the official classifiers (github EasonXiao-888/GrootVL, `GrootV/classification/models`); the tree and the
scan are `vision2d.ops.tree_scan` (math and tie rules in `vision2d.ops.tree_scan_ref`).

Each block's mixer (`TreeSSM`) projects x to 2C channels, runs a depthwise 3x3 conv and SiLU, builds a minimum
spanning tree of the pixel grid from those features (edge weight exp(-cosine similarity)), and propagates
dt * B * x over it with per-pixel decays exp(dt * A) (d_state 1); the result is LayerNorm'ed, scaled by C, plus D * x,
LayerNorm'ed again and gated by SiLU(z). Tensors inside stages are channels-last (B, H, W, C); the stem input and the
returned features are NCHW.
"""
import math
import re
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, register_model, register_notrace_function
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..ops.tree_scan import selective_tree_scan_2d, tree_scan_readout
from .vmamba import released_checkpoint_globals  # the yacs config globals of the released files

__all__ = ["GrootV", "checkpoint_filter_fn", "released_checkpoint_globals"]

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # block, stage and downsample norms; the mixer's two norms use 1e-5
MIN_INPUT_SIZE = 1

register_notrace_function(selective_tree_scan_2d)
register_notrace_function(tree_scan_readout)


@torch.jit.ignore  # TorchScript runs it as Python
@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int):
    """Raise a clear error for input that is not (B, in_chans, H, W) with H, W >= 1."""
    if x.dim() != 4:
        raise ValueError(f"GrootV expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"GrootV was built for {in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}, expected (B, {in_chans}, H, W))")
    if min(x.shape[2:]) < MIN_INPUT_SIZE:
        raise ValueError(f"GrootV needs H and W >= {MIN_INPUT_SIZE} pixels, got {tuple(x.shape[2:])}")


class TreeSSM(nn.Module):
    """The tree state-space mixer (official `Tree_SSM`: d_state 1, one direction); (B, H, W, C) in and out."""

    def __init__(self, dim: int, ssm_ratio: float = 2.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        inner = int(ssm_ratio * dim)
        self.dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False, **dd)
        self.conv2d = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False, **dd)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2, bias=False, **dd)  # dt, B, C
        self.dt_proj = nn.Linear(self.dt_rank, inner, **dd)
        self.A_log = nn.Parameter(torch.empty(inner, 1, **dd))
        self.D = nn.Parameter(torch.empty(inner, **dd))
        # the read-out's two LayerNorms (eps 1e-5), applied by `tree_scan_readout` in fp32 (fp64 for fp64 input)
        self.h_norm = nn.LayerNorm(inner, **dd)
        self.out_norm = nn.LayerNorm(inner, **dd)
        self.out_proj = nn.Linear(inner, dim, bias=False, **dd)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        """Official init: x_proj PyTorch's Linear default, dt weights U(+-rank^-0.5), dt bias softplus^-1 of
        log-uniform [dt_min, dt_max], A = 1, D = 1."""
        self.x_proj.reset_parameters()
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_proj.bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.zero_()  # log(1)
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in_proj as two matmuls (its weight's halves): x and z each come out contiguous, x channels-last for the conv
        x_weight, z_weight = self.in_proj.weight.chunk(2, dim=0)
        x, z = F.linear(x, x_weight), F.linear(x, z_weight)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)  # (B, H, W, inner), contiguous
        # the official scan runs in fp32 whatever the input dtype (fp64 stays fp64 here)
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        dtype = xs.dtype
        dt, b, c = F.linear(xs, self.x_proj.weight.to(dtype)).split([self.dt_rank, 1, 1], dim=-1)
        # its bias and softplus are applied inside the op; .to(dtype): autocast makes matmuls half precision
        delta = F.linear(dt, self.dt_proj.weight.to(dtype)).to(dtype)
        A = -torch.exp(self.A_log.to(dtype).flatten())  # d_state 1: one decay rate per channel
        h = selective_tree_scan_2d(xs, delta, A, b.squeeze(-1).to(dtype), xs, self.dt_proj.bias.to(dtype))  # xs: guide
        # out_norm(h_norm(h) * C + D * x) * silu(z), the gate in fp32 as well
        y = tree_scan_readout(h.flatten(1, 2), xs.flatten(1, 2), z.flatten(1, 2), c.flatten(1), self.D.to(dtype),
                              self.h_norm.weight.to(dtype), self.h_norm.bias.to(dtype), self.h_norm.eps,
                              self.out_norm.weight.to(dtype), self.out_norm.bias.to(dtype), self.out_norm.eps)
        return self.out_proj(y.view_as(x).to(x.dtype))


class GrootVBlock(nn.Module):
    """x + DropPath(TreeSSM(LN(x))), then x + DropPath(MLP(LN(x))); (B, H, W, C)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm(dim, **dd)
        self.mixer = TreeSSM(dim, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Downsample(nn.Module):
    """3x3 stride-2 conv (no bias) to 2C, then LayerNorm; (B, H, W, C) in, (B, H/2, W/2, 2C) out."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False, device=device, dtype=dtype)
        self.norm = LayerNorm(out_chs, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class GrootVStage(nn.Module):
    """Optional downsample, the blocks, then a LayerNorm; (B, H, W, C) in and out."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool, drop_path_rates: List[float],
                 mlp_ratio: float = 4.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = Downsample(in_chs, out_chs, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[GrootVBlock(out_chs, mlp_ratio, drop_path_rates[i], **dd) for i in range(depth)])
        self.norm = LayerNorm(out_chs, **dd)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class Stem(nn.Module):
    """conv 3x3/2 -> LayerNorm -> GELU -> conv 3x3/2 -> LayerNorm; (B, in_chans, H, W) in, (B, H/4, W/4, C) out."""

    def __init__(self, in_chans: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, out_chs // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = LayerNorm2d(out_chs // 2, eps=1e-6, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd)
        self.norm2 = LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.norm1(self.conv1(x))))
        return self.norm2(x.permute(0, 2, 3, 1))


class ConvHead(nn.Module):
    """1x1 conv (no bias) to `hidden_size` -> BN -> GELU -> global average pool -> Dropout -> Linear (`fc`);
    (B, C, H, W) in, (B, num_classes) out. Without pooling (global_pool '') it returns the (B, hidden_size, H, W) map,
    or the classifier applied at every pixel, (B, num_classes, H, W)."""

    def __init__(self, in_chs: int, num_classes: int, hidden_size: int, drop_rate: float = 0.0, pool: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pool = pool
        self.conv = nn.Conv2d(in_chs, hidden_size, 1, bias=False, **dd)
        self.norm = nn.BatchNorm2d(hidden_size, **dd)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int):
        w = self.conv.weight
        self.fc = nn.Linear(w.shape[0], num_classes, device=w.device, dtype=w.dtype) if num_classes > 0 \
            else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.act(self.norm(self.conv(x)))
        if not self.pool:
            return x if pre_logits else self.fc(self.drop(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)


def _check_pooling(global_pool: str):
    """'avg' (the official head), or '' (no pooling: the head returns maps)."""
    if global_pool not in ("avg", ""):
        raise ValueError(f"GrootV supports global_pool 'avg' or '' (no pooling), got {global_pool!r}")


class GrootV(nn.Module):
    """GrootV classifier. Any input of at least 1x1 pixels works (odd and non-square sizes included)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (2, 2, 9, 2),
            embed_dim: int = 80,
            mlp_ratio: float = 4.0,
            head_hidden_ratio: float = 1.5,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        _check_pooling(global_pool)
        dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = dims[-1]
        self.head_hidden_size = int(dims[-1] * head_hidden_ratio)

        self.stem = Stem(in_chans, embed_dim, **dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info, start = [], [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(GrootVStage(dims[max(i - 1, 0)], dim, depth, downsample=i > 0,
                                      drop_path_rates=rates[start:start + depth], mlp_ratio=mlp_ratio, **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = ConvHead(dims[-1], num_classes, self.head_hidden_size, drop_rate, pool=global_pool == "avg", **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        """Official init: Linear weights truncated normal (std 0.02), biases 0; then (`apply` visits children first)
        each TreeSSM re-initialises x_proj and dt_proj, which the official code keeps outside nn.Linear."""
        if isinstance(module, TreeSSM):
            module.reset_ssm_parameters()
        elif isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's rule (1-D parameters and biases): the official optimizer decays A_log, which is 2-D."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^stages\.(\d+)\.norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Checkpoint every block: each runs once more in the backward (its tree is rebuilt, identically)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        global_pool = self.global_pool if global_pool is None else global_pool
        _check_pooling(global_pool)
        if isinstance(self.head, nn.Identity):
            raise RuntimeError("the head was pruned by prune_intermediate_layers(prune_head=True); rebuild the model")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head.pool = global_pool == "avg"
        self.head.reset(num_classes)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (after each stage's LayerNorm) as NCHW maps at strides 4, 8, 16, 32.

        indices: last n stages if int, all if None, else the listed stages. `norm` has no effect (every stage ends
        in its own norm). Returns the intermediates, or (final NCHW features, intermediates).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"GrootV intermediates are NCHW only, got output_fmt={output_fmt!r}")
        check_input(x, self.in_chans)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x.permute(0, 3, 1, 2))
        x = x.permute(0, 3, 1, 2)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last wanted intermediate (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:  # the whole head goes: unused parameters would break DDP (find_unused_parameters=False)
            self.head = nn.Identity()
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> last stage map (B, num_features, ~H/32, ~W/32)."""
        check_input(x, self.in_chans)
        return self.stages(self.stem(x)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Conv head and pool; pre_logits=True returns the (B, head_hidden_size) features before the classifier.
        After `prune_intermediate_layers(prune_head=True)` there is no head and x is returned unchanged."""
        if isinstance(self.head, nn.Identity):
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official keys: patch_embed.conv1/norm1.1/conv2/norm2.1.*, levels.{i}.blocks.{j}.*
# (norm1.0, TreeSSM.*, norm2.0, mlp.fc1/fc2), levels.{i}.norm.0.*, levels.{i}.downsample.conv/norm.1.* (the
# downsample ending level i starts our stage i + 1), conv_head.0 (conv) / conv_head.1.0 (BN), head.*.

_OFFICIAL_RENAMES = [
    (r"^patch_embed\.(conv[12])\.", r"stem.\1."),
    (r"^patch_embed\.(norm[12])\.1\.", r"stem.\1."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.(norm[12])\.0\.", r"stages.\1.blocks.\2.\3."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.TreeSSM\.", r"stages.\1.blocks.\2.mixer."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.mlp\.", r"stages.\1.blocks.\2.mlp."),
    (r"^levels\.(\d+)\.norm\.0\.", r"stages.\1.norm."),
    (r"^conv_head\.0\.", "head.conv."),
    (r"^conv_head\.1\.0\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
]
_SSM_RENAMES = {"x_proj_weight": "x_proj.weight", "dt_projs_weight": "dt_proj.weight", "dt_projs_bias": "dt_proj.bias",
                "A_logs": "A_log", "Ds": "D"}
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def _rename_official_key(key: str) -> str:
    match = re.match(r"^levels\.(\d+)\.downsample\.(conv|norm\.1)\.(.*)$", key)
    if match:
        part = "conv" if match[2] == "conv" else "norm"
        return f"stages.{int(match[1]) + 1}.downsample.{part}.{match[3]}"
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    name = key.rsplit(".", 1)[-1]
    if ".mixer." in key and name in _SSM_RENAMES:
        key = key[:-len(name)] + _SSM_RENAMES[name]
    return key


def checkpoint_filter_fn(state_dict: Dict, model: GrootV) -> Dict[str, torch.Tensor]:
    """Convert an official GrootV classification checkpoint or one of ours to this model's keys.

    Official files hold `model` and, with EMA on as in every released config, `model_ema`; the official evaluation
    (`main.py --eval --resume`) reports both networks. Like timm's loader, which unwraps `model_ema` before any filter
    runs, this takes `model_ema` when present (then `state_dict_ema`, `model`, `state_dict`, else the dict itself).
    Keys may carry `module.` / `_orig_mod.` prefixes. Raises ValueError listing missing, unexpected and mis-shaped
    keys when the file does not fit `model`; a classifier of another size is kept for timm to replace when
    `num_classes` differs.
    """
    for wrapper in ("model_ema", "state_dict_ema", "model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    tensors = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            while key.startswith(_STRIP_PREFIXES):
                key = key.split(".", 1)[1]
            tensors[key] = value
    official = any(k.startswith(("levels.", "patch_embed.")) for k in tensors)
    out = {}
    for key, value in tensors.items():
        if official:
            key = _rename_official_key(key)
            name = key.rsplit(".", 1)[-1]
            if ".mixer." in key and name in ("weight", "bias") and key.rsplit(".", 2)[-2] in ("x_proj", "dt_proj"):
                value = value[0]  # the official (K=1, ...) stacks of one direction
        out[key] = value.contiguous()
    check_state_dict_fits(out, model)
    return out


def _create_grootv(variant: str, pretrained: bool = False, **kwargs) -> GrootV:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 9, 2))))))
    # the official save_checkpoint pickles its yacs training config, as VMamba's does: read it as inert data
    with torch.serialization.safe_globals(released_checkpoint_globals()):
        return build_model_with_cfg(
            GrootV, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1", "classifier": "head.fc", "license": "unknown",
        "paper_ids": "arXiv:2406.02395", "paper_name": "GrootVL: Tree Topology is All You Need in State Space Model",
        "origin_url": "https://github.com/EasonXiao-888/GrootVL", **kwargs,
    }


# No hosted weights: pass the official release (or a converted file) with pretrained_cfg_overlay=dict(file=...).
# Official evaluation: resize to 224 (crop_pct 1.0), bicubic, ImageNet mean/std.
default_cfgs = generate_default_cfgs({
    "grootv_tiny.in1k": _cfg(),
    "grootv_small.in1k": _cfg(),
    "grootv_base.in1k": _cfg(),
    "test_grootv.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def grootv_tiny(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-T: 30.0M params, ImageNet-1k top-1 83.4."""
    args = dict(depths=(2, 2, 9, 2), embed_dim=80, drop_path_rate=0.1)
    return _create_grootv("grootv_tiny", pretrained, **dict(args, **kwargs))


@register_model
def grootv_small(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-S: 51.3M params, ImageNet-1k top-1 84.2."""
    args = dict(depths=(2, 2, 13, 2), embed_dim=96, drop_path_rate=0.3)
    return _create_grootv("grootv_small", pretrained, **dict(args, **kwargs))


@register_model
def grootv_base(pretrained: bool = False, **kwargs) -> GrootV:
    """GrootV-B: 90.6M params, ImageNet-1k top-1 84.8."""
    args = dict(depths=(2, 2, 13, 2), embed_dim=128, drop_path_rate=0.5)
    return _create_grootv("grootv_base", pretrained, **dict(args, **kwargs))


@register_model
def test_grootv(pretrained: bool = False, **kwargs) -> GrootV:
    """A tiny GrootV for tests (the parity fixture's architecture): 0.2M params with a 1000-class head."""
    args = dict(depths=(1, 1, 2, 1), embed_dim=8)
    return _create_grootv("test_grootv", pretrained, **dict(args, **kwargs))
