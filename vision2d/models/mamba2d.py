"""Mamba2D: hierarchical MetaFormer backbone with a native 2D selective scan (stages 1-2) and 2D-RoPE attention
(stages 3-4). Exact to the official v2 classifiers (github cocoalex00/Mamba2D); the math is in the spec
`mamba2d.md` and `vision2d.ops.scan2d_ref`.

Tensors inside stages are channels-last (B, H, W, C); the stem, downsampling and returned features are NCHW.
"""
import math
import re
from functools import partial
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, LayerNorm2d, Mlp
from timm.models._features import feature_take_indices
from timm.models import build_model_with_cfg, register_model, register_notrace_function
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..layers import StarReLU, apply_rope_2d, rope_2d_angles
from ..ops import selective_scan_2d

__all__ = ["Mamba2D", "checkpoint_filter_fn"]

LayerNorm = partial(nn.LayerNorm, eps=1e-5)
MIN_INPUT_SIZE = 3  # the 7x7 / stride 4 / padding 2 stem needs at least 3 pixels per side

# torch.fx (timm's feature extraction) keeps these as single graph nodes: they check or branch on input shapes
register_notrace_function(selective_scan_2d)
register_notrace_function(rope_2d_angles)


@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int):
    """Raise a clear error for input that is not (B, in_chans, H, W) with H, W >= MIN_INPUT_SIZE."""
    if x.dim() != 4:
        raise ValueError(f"Mamba2D expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"Mamba2D was built for {in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}, expected (B, {in_chans}, H, W))")
    if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:  # one guard per size: compile knows both bounds
        raise ValueError(f"Mamba2D needs H and W >= {MIN_INPUT_SIZE} pixels, got {tuple(x.shape[2:])}")


class SepConv(nn.Module):
    """Linear(C->2C) -> StarReLU -> depthwise 3x3 -> StarReLU -> Linear(2C->C), no biases; (B, H, W, C) in and out."""

    def __init__(self, dim: int, expansion: int = 2, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = dim * expansion
        self.pwconv1 = nn.Linear(dim, hidden, bias=False, **dd)
        self.act1 = StarReLU(**dd)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False, **dd)
        self.act2 = StarReLU(**dd)
        self.pwconv2 = nn.Linear(hidden, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.pwconv2(self.act2(x))


class Mamba2DMixer(nn.Module):
    """The "2D_local" token mixer: 2D selective scan branch plus a local SepConv branch; (B, H, W, C) in and out.

    Scan branch: in_proj -> GELU -> M2D-SSM -> GELU -> out_proj. A `reverse` mixer scans from the bottom-right corner,
    which equals the official flip of H and W around in_proj..out_proj (all per-pixel ops commute with the flip).
    """

    def __init__(self, dim: int, d_state: int = 16, reverse: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.reverse = reverse
        self.A_t_log = nn.Parameter(torch.empty(dim, d_state, **dd))
        self.A_l_log = nn.Parameter(torch.empty(dim, d_state, **dd))
        self.D = nn.Parameter(torch.empty(dim, **dd))
        self.local_norm = LayerNorm(dim, **dd)
        self.local_path = SepConv(dim, **dd)
        self.in_proj = nn.Linear(dim, dim, **dd)
        self.x_proj = nn.Linear(dim, 2 * self.dt_rank + 3 * d_state, bias=False, **dd)
        self.dt_proj_t = nn.Linear(self.dt_rank, dim, **dd)
        self.dt_proj_l = nn.Linear(self.dt_rank, dim, **dd)
        self.out_proj = nn.Linear(dim, dim, **dd)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        """S4D-real A = -(1..N), D = 1, dt weights U(+-R^-1/2), one dt bias draw shared by both directions."""
        dim = self.D.shape[0]
        a_log = torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.D.device))
        self.A_t_log.copy_(a_log.expand(dim, -1))
        self.A_l_log.copy_(a_log.expand(dim, -1))
        self.D.fill_(1.0)
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj_t.weight, -bound, bound)
        nn.init.uniform_(self.dt_proj_l.weight, -bound, bound)
        dt = torch.exp(torch.rand(dim, device=self.D.device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        self.dt_proj_t.bias.copy_(inv_softplus_dt)
        self.dt_proj_l.bias.copy_(inv_softplus_dt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_path(self.local_norm(x))
        u = F.gelu(self.in_proj(x))
        r_t, r_l, b_t, b_l, c = self.x_proj(u).split([self.dt_rank] * 2 + [self.d_state] * 3, dim=-1)
        y = selective_scan_2d(
            u, self.dt_proj_t(r_t), self.dt_proj_l(r_l), -torch.exp(self.A_t_log.float()),
            -torch.exp(self.A_l_log.float()), b_t, b_l, c, self.D.float(), delta_softplus=True, reverse=self.reverse)
        return self.out_proj(F.gelu(y)) + local


class RopeAttention(nn.Module):
    """Multi-head self-attention over all tokens with 2D RoPE and per-head q/k LayerNorm (after RoPE);
    (B, H, W, C) in and out, head_dim 32, no biases on qkv and proj."""

    def __init__(self, dim: int, head_dim: int = 32, rope_base: float = 10000.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % head_dim:
            raise ValueError(f"RopeAttention: dim {dim} is not divisible by head_dim {head_dim}")
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.rope_base = rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **dd)
        self.q_norm = LayerNorm(head_dim, **dd)
        self.k_norm = LayerNorm(head_dim, **dd)
        self.proj = nn.Linear(dim, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, T, head_dim)
        angles = rope_2d_angles(H, W, self.head_dim, self.rope_base, device=x.device)
        q = self.q_norm(apply_rope_2d(q, angles))
        k = self.k_norm(apply_rope_2d(k, angles))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, H, W, C))


class ResScale(nn.Module):
    """Per-channel scale of the shortcut (MetaFormer res-scale): x * scale, scale (C,)."""

    def __init__(self, dim: int, init_value: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init_value, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Mamba2DBlock(nn.Module):
    """MetaFormer block: x = s1 * x + DropPath(mixer(LN(x))); x = s2 * x + DropPath(MLP(LN(x))); (B, H, W, C)."""

    def __init__(self, dim: int, mixer: str, reverse: bool = False, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 res_scale_init: float = 1.0, d_state: int = 16, head_dim: int = 32, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = LayerNorm(dim, **dd)
        if mixer == "ssm2d":
            self.token_mixer = Mamba2DMixer(dim, d_state=d_state, reverse=reverse, **dd)
        elif mixer == "attention":
            self.token_mixer = RopeAttention(dim, head_dim=head_dim, **dd)
        else:
            raise ValueError(f"unknown Mamba2D mixer {mixer!r}; expected 'ssm2d' or 'attention'")
        self.res_scale1 = ResScale(dim, res_scale_init, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.res_scale2 = ResScale(dim, res_scale_init, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.drop_path1(self.token_mixer(self.norm1(x)))
        return self.res_scale2(x) + self.drop_path2(self.mlp(self.norm2(x)))


class Mamba2DStage(nn.Module):
    """Optional 3x3 stride-2 conv downsample (NCHW), then the blocks and a post-LayerNorm in channels-last."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, mixer: str, downsample: bool,
                 drop_path_rates: List[float], inter_flip: bool = True, device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            Mamba2DBlock(out_chs, mixer, reverse=inter_flip and i % 2 == 1, drop_path=drop_path_rates[i],
                         **block_kwargs, **dd)
            for i in range(depth)
        ])
        self.norm = LayerNorm(out_chs, **dd)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).permute(0, 3, 1, 2)


POOL_TYPES = ("avg", "")  # mean over the map, or none (the head then runs at every position)


def check_pool_type(global_pool: str):
    if global_pool not in POOL_TYPES:
        raise ValueError(f"Mamba2D supports global_pool 'avg' or '' (no pooling), got {global_pool!r}")


class MlpClassifierHead(nn.Module):
    """Mean-pool -> LN(C) -> Linear(C, hidden) -> GELU -> LN(hidden) -> Dropout -> Linear(hidden, classes).
    `fc` is the classifier; (B, C, H, W) in, (B, num_classes) out. Without pooling (pool_type '') the same layers
    run at every position: (B, num_classes, H, W) out."""

    def __init__(self, in_chs: int, num_classes: int, hidden_size: int, drop_rate: float = 0.0,
                 pool_type: str = "avg", device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        check_pool_type(pool_type)
        self.pool_type = pool_type
        self.norm = LayerNorm(in_chs, **dd)
        self.fc1 = nn.Linear(in_chs, hidden_size, **dd)
        self.act = nn.GELU()
        self.hidden_norm = LayerNorm(hidden_size, **dd)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None):
        if pool_type is not None:
            check_pool_type(pool_type)
            self.pool_type = pool_type
        w = self.fc1.weight
        self.fc = nn.Linear(w.shape[0], num_classes, device=w.device, dtype=w.dtype) if num_classes > 0 else nn.Identity()
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if self.pool_type == "avg" else x.permute(0, 2, 3, 1)
        x = self.drop(self.hidden_norm(self.act(self.fc1(self.norm(x)))))
        x = x if pre_logits else self.fc(x)
        return x if self.pool_type == "avg" else x.permute(0, 3, 1, 2)


class Mamba2D(nn.Module):
    """Mamba2D classifier. Any input of at least 3x3 pixels works (odd and non-square sizes included)."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (3, 3, 9, 3),
            dims: Tuple[int, ...] = (64, 128, 320, 512),
            mixers: Tuple[str, ...] = ("ssm2d", "ssm2d", "attention", "attention"),
            d_state: int = 16,
            head_dim: int = 32,
            mlp_ratio: float = 4.0,
            res_scale_init: float = 1.0,
            inter_flip: bool = True,
            head_hidden_ratio: int = 4,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not len(depths) == len(dims) == len(mixers):
            raise ValueError(f"depths {depths}, dims {dims} and mixers {mixers} must have the same length")
        check_pool_type(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = dims[-1]
        self.head_hidden_size = dims[-1] * head_hidden_ratio

        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, dims[0], 7, stride=4, padding=2, **dd))
        self.stem.add_module("norm", LayerNorm2d(dims[0], eps=1e-5, **dd))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info, start = [], [], 0
        for i, (depth, dim, mixer) in enumerate(zip(depths, dims, mixers)):
            stages.append(Mamba2DStage(
                dims[max(i - 1, 0)], dim, depth, mixer, downsample=i > 0, drop_path_rates=rates[start:start + depth],
                inter_flip=inter_flip, mlp_ratio=mlp_ratio, res_scale_init=res_scale_init, d_state=d_state,
                head_dim=head_dim, **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = MlpClassifierHead(dims[-1], num_classes, self.head_hidden_size, drop_rate, global_pool, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The SSM's A logs and D skip are not decayed (1-D parameters are excluded by timm's optimizer already)."""
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("A_t_log", "A_l_log", "D")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^stages\.(\d+)\.norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Checkpoint every block (as timm's hierarchical models do): each runs once more in the backward."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if isinstance(self.head, nn.Identity):
            raise RuntimeError("the head was pruned by prune_intermediate_layers(prune_head=True); rebuild the model")
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        self.global_pool = self.head.pool_type

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
        in its own norm). Returns the intermediates, or (final features, intermediates).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"Mamba2D intermediates are NCHW only, got output_fmt={output_fmt!r}")
        check_input(x, self.in_chans)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
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
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled head; pre_logits=True returns the (B, head_hidden_size) features before the classifier.
        After `prune_intermediate_layers(prune_head=True)` there is no head and x is returned unchanged."""
        if isinstance(self.head, nn.Identity):
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official keys (Lightning module): backbone.ds.stem.*, backbone.ds.ds{k}.conv.*,
# backbone.stages.{k}.{i}.* (i == depth is the stage post-norm), norm.*, head.fc1/norm/fc2.*.

_OFFICIAL_RENAMES = [
    (r"^ds\.stem\.conv\.", "stem.conv."),
    (r"^ds\.stem\.post_norm\.norm\.", "stem.norm."),
    (r"^ds\.ds(\d+)\.conv\.", r"stages.\1.downsample."),
    (r"^head\.norm\.", "head.hidden_norm."),  # before the next rule, which produces `head.norm.`
    (r"^norm\.", "head.norm."),
    (r"^head\.fc2\.", "head.fc."),
    (r"\.token_mixer\.AT_log$", ".token_mixer.A_t_log"),
    (r"\.token_mixer\.AL_log$", ".token_mixer.A_l_log"),
    (r"\.token_mixer\.dt_projT\.", ".token_mixer.dt_proj_t."),
    (r"\.token_mixer\.dt_projL\.", ".token_mixer.dt_proj_l."),
    (r"\.MLP\.", ".mlp."),
]
_OFFICIAL_KEY = re.compile(r"^(ds\.|norm\.|head\.fc2\.|stages\.\d+\.\d+\.)")  # keys only official files have
_CHECKPOINT_WRAPPERS = ("model_ema", "state_dict_ema", "state_dict", "model")  # EMA weights first, like timm
_STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")


def _unwrap_state_dict(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    for key in _CHECKPOINT_WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _rename_official_key(key: str, stage_depths: List[int]) -> str:
    match = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", key)
    if match:
        stage, index, rest = int(match[1]), int(match[2]), match[3]
        if stage < len(stage_depths) and index == stage_depths[stage]:
            key = f"stages.{stage}.norm.{rest}"
        else:
            key = f"stages.{stage}.blocks.{index}.{rest}"
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Dict, model: Mamba2D) -> Dict[str, torch.Tensor]:
    """Convert an official Mamba2D v2 checkpoint (raw, or wrapped under `model_ema`/`state_dict_ema`/`state_dict`/
    `model`, keys with or without `backbone.`/`module.`/`_orig_mod.` prefixes) or one of ours to this model's keys.

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`
    (another variant, the v1 architecture, a truncated file). As for every family (`check_state_dict_fits`), timm
    then adapts a 3-channel stem to another `in_chans` and replaces the classifier when `num_classes` differs from the
    file's.
    """
    state_dict = _unwrap_state_dict(state_dict)
    depths = [len(stage.blocks) for stage in model.stages]
    tensors = {_strip_prefixes(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    official = any(_OFFICIAL_KEY.match(k) for k in tensors)  # ours are only stripped: `head.norm` differs in meaning
    out = {}
    for key, value in tensors.items():
        key = _rename_official_key(key, depths) if official else key
        out[key] = value.contiguous()  # official convs are saved channels_last
    check_state_dict_fits(out, model, hint=_fit_hint(out, model))
    return out


def _fit_hint(state_dict: Dict[str, torch.Tensor], model: Mamba2D) -> str:
    """What the error of a checkpoint that does not fit `model` adds: the model's shape, and the v1 layout."""
    hint = (f" (model dims {[s.norm.normalized_shape[0] for s in model.stages]}, depths "
            f"{[len(s.blocks) for s in model.stages]})")
    x_proj = "stages.0.blocks.0.token_mixer.x_proj.weight"
    expected = model.state_dict().get(x_proj)
    if x_proj in state_dict and expected is not None and state_dict[x_proj].shape[0] != expected.shape[0]:
        hint += "; x_proj has 2R+2N rows in v1 checkpoints: only the v2 architecture is supported"
    return hint


def _create_mamba2d(variant: str, pretrained: bool = False, **kwargs) -> Mamba2D:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (3, 3, 9, 3))))))
    return build_model_with_cfg(
        Mamba2D, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "unknown",
        "paper_ids": "arXiv:2412.16146", "paper_name": "Mamba2D: A Natively Multi-Dimensional State-Space Model for "
        "Vision Tasks", "origin_url": "https://github.com/cocoalex00/Mamba2D", **kwargs,
    }


# No hosted weights: convert the official release with tools/convert_checkpoint.py and pass the file with
# pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "mamba2d_nano.in1k": _cfg(),
    "mamba2d_tiny.in1k": _cfg(),
    "mamba2d_small.in1k": _cfg(),
    "test_mamba2d.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def mamba2d_nano(pretrained: bool = False, **kwargs) -> Mamba2D:
    """Mamba2D-N: 7.2M params, ImageNet-1k top-1 79.6."""
    args = dict(depths=(3, 3, 9, 3), dims=(32, 64, 160, 256), drop_path_rate=0.0, drop_rate=0.0)
    return _create_mamba2d("mamba2d_nano", pretrained, **dict(args, **kwargs))


@register_model
def mamba2d_tiny(pretrained: bool = False, **kwargs) -> Mamba2D:
    """Mamba2D-T: 26.5M params, ImageNet-1k top-1 84.0."""
    args = dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), drop_path_rate=0.175, drop_rate=0.15)
    return _create_mamba2d("mamba2d_tiny", pretrained, **dict(args, **kwargs))


@register_model
def mamba2d_small(pretrained: bool = False, **kwargs) -> Mamba2D:
    """Mamba2D-S: 50.3M params, ImageNet-1k top-1 85.3."""
    args = dict(depths=(3, 12, 14, 3), dims=(96, 192, 384, 576), drop_path_rate=0.4, drop_rate=0.4)
    return _create_mamba2d("mamba2d_small", pretrained, **dict(args, **kwargs))


@register_model
def test_mamba2d(pretrained: bool = False, **kwargs) -> Mamba2D:
    """A tiny Mamba2D for tests: both mixers, both scan directions, 0.35M params with a 1000-class head."""
    args = dict(depths=(2, 2, 1, 1), dims=(16, 32, 64, 64), head_hidden_ratio=2)
    return _create_mamba2d("test_mamba2d", pretrained, **dict(args, **kwargs))
