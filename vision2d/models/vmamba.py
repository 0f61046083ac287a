"""VMamba: hierarchical backbone of visual state-space blocks whose SS2D mixer scans every map in four directions
(row-major, column-major and both reversed) with the 1D selective scan. Exact to the official v2 classifiers
(github MzeroMiko/VMamba, `classification/models/vmamba.py`, forward type ``v05_noz`` with ``ln2d`` norms, ``v2``
patch embedding and ``v3`` downsampling).

Tensors inside stages are channels-last (B, H, W, C): the official channel-first LayerNorm2d / Linear2d (1x1 conv)
compute the same per-pixel math. The stem, the downsampling convs and returned features are NCHW. The four scan
directions are index maps (`cross_scan_orders`) read by `selective_scan`, which also sums them back (no copies of the
map in scan order).
"""
import math
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import ClassifierHead, DropPath, LayerNorm2d
from timm.models import build_model_with_cfg, register_model, register_notrace_function, register_notrace_module
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..layers import DepthwiseConv2d, Linear, Mlp, derived, linear
from ..ops import cross_scan_orders, selective_scan, selective_scan_2pass
from ..ops.scan_orders import stored_per_device
from ..ops.selective_scan_ref import project_delta

__all__ = ["VMamba", "checkpoint_filter_fn", "released_checkpoint_globals"]

NUM_DIRECTIONS = 4  # VMamba's cross scan
# SS2D's scan over the four directions: "cross" VMamba's 1D selective scan along each direction's sequence, "2pass"
# 2DVMamba's two-pass 2D selective scan (rows then columns) on each direction's grid (`selective_scan_2pass`)
SCANS = ("cross", "2pass")


POOL_TYPES = ("avg", "")  # '' keeps the map unpooled (timm's convention)


def check_pool_type(global_pool: str):
    if global_pool not in POOL_TYPES:
        raise ValueError(f"VMamba-style models support global_pool 'avg' or '' (no pooling), got {global_pool!r}")


def overwritable(x: torch.Tensor) -> bool:
    """True where autograd will not need x (inference): an activation may then overwrite its freshly made input
    instead of allocating another buffer (on CPU at batch 16, a new buffer per VMamba-T stage-1 MLP costs ~20 ms of
    page faults)."""
    return not (torch.is_grad_enabled() and x.requires_grad)


@register_notrace_function  # torch.fx keeps it as one node: it branches on autograd's state
def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, in place where autograd does not need x (`overwritable`)."""
    return torch.ops.aten.gelu_(x) if overwritable(x) else F.gelu(x)


# cached_cross_scan_orders(H, W, device): `cross_scan_orders` kept per size and device
cached_cross_scan_orders = stored_per_device(cross_scan_orders)


@register_notrace_function  # torch.fx keeps it as one node: it branches on autograd's state and dtypes
def add_residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, written into branch (a block's freshly made output: no new buffer) where autograd does not need it
    and branch holds the sum's dtype (under autocast a bf16 branch added to a float32 stream makes a new float32
    tensor, as x + branch does)."""
    if overwritable(branch) and branch.dtype == torch.promote_types(branch.dtype, x.dtype):
        return branch.add_(x)
    return x + branch


class GELU(nn.GELU):
    """nn.GELU (exact) computed in place where autograd does not need its input (`gelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x)


def direction_step_sizes(dts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each direction's dt_proj: (batch, L, K, R) low-rank steps x (K, E, R) weights -> contiguous (batch, L, K, E) in
    dts' dtype (the activations' under autocast); `selective_scan` does this inside its kernel when given the weight
    (`delta_proj_weight`), the 2pass scan takes the projected steps."""
    return project_delta(dts, weight, dts.dtype)


@register_notrace_module  # torch.fx (timm's feature extraction) keeps the mixer whole: it reshapes by input size
class SS2D(nn.Module):
    """The 2D selective-scan mixer (official SS2D, forward type v05_noz); (B, H, W, C) in and out.

    in_proj (no bias) -> depthwise 3x3 conv -> SiLU -> four-direction selective scan (per-direction x_proj, dt_proj,
    A, D; the directions summed) -> LayerNorm -> out_proj (no bias). Parameters keep the official names and shapes:
    x_proj_weight (K, R + 2N, E), dt_projs_weight (K, E, R), dt_projs_bias (K, E), A_logs (K * E, N), Ds (K * E),
    with K = 4 directions, E = ssm_ratio * dim channels, R = ceil(dim / 16), N = d_state. `scan` is one of SCANS;
    `num_directions` sets K for subclasses that scan otherwise (this forward scans the four cross-scan directions).
    """

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, conv_bias: bool = False,
                 scan: str = "cross", num_directions: int = NUM_DIRECTIONS, device=None, dtype=None):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"SS2D: unknown scan {scan!r}; expected one of {SCANS}")
        dd = dict(device=device, dtype=dtype)
        self.scan = scan
        inner = int(ssm_ratio * dim)
        self.d_inner, self.d_state, self.dt_rank = inner, d_state, math.ceil(dim / 16)
        K, R, N = num_directions, self.dt_rank, d_state
        self.in_proj = Linear(dim, inner, bias=False, **dd)
        self.conv = DepthwiseConv2d(inner, 3, bias=conv_bias, activation="silu", **dd)  # SiLU(DWConv3x3(x))
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, inner, R, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(K * inner, N, **dd))
        self.Ds = nn.Parameter(torch.empty(K * inner, **dd))
        self.out_norm = nn.LayerNorm(inner, **dd)
        self.out_proj = Linear(inner, dim, bias=False, **dd)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        """Official init: x_proj / dt_proj weights U(+-1/sqrt(fan_in)) / U(+-R^-1/2), dt biases the inverse softplus
        of dt log-uniform in [dt_min, dt_max], S4D-real A = -(1..N), D = 1."""
        inner, R, N = self.d_inner, self.dt_rank, self.d_state
        nn.init.uniform_(self.x_proj_weight, -inner ** -0.5, inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -R ** -0.5, R ** -0.5)
        device, K = self.Ds.device, self.dt_projs_bias.shape[0]
        dt = torch.exp(torch.rand(K, inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=device)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan_constants(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A = -exp(A_logs) (K, E, N), D (K, E), delta_bias (K, E)) in float32 from the current parameters."""
        K, E = self.dt_projs_bias.shape
        return -torch.exp(self.A_logs.float()).view(K, E, -1), self.Ds.float().view(K, E), self.dt_projs_bias.float()

    @torch.jit.unused
    def eval_scan_constants(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`scan_constants`, kept while the parameters are unchanged where no gradient is recorded (`derived`)."""
        return derived(self, "scan_constants", self.scan_constants, self.A_logs, self.Ds, self.dt_projs_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, _ = x.shape
        K, E, R, N = NUM_DIRECTIONS, self.d_inner, self.dt_rank, self.d_state
        u = self.conv(self.in_proj(x)).view(batch, H * W, E)
        # per direction k, at every pixel: (dt_k, B_k, C_k) = x_proj_k(u); delta_k = dt_proj_k(dt_k)
        x_dbl = linear(u, self.x_proj_weight.reshape(K * (R + 2 * N), E)).view(batch, H * W, K, R + 2 * N)
        dts, Bs, Cs = x_dbl.split([R, N, N], dim=-1)
        A, D, delta_bias = self.scan_constants() if torch.jit.is_scripting() else self.eval_scan_constants()
        if self.scan == "2pass":
            delta = direction_step_sizes(dts, self.dt_projs_weight)
            y = selective_scan_2pass(u, delta, A, Bs, Cs, D, delta_bias, delta_softplus=True, height=H, width=W)
        else:  # the scan projects dts by dt_proj as it runs (delta (batch, L, K, E) is never stored)
            y = selective_scan(u, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True,
                               order=cached_cross_scan_orders(H, W, u.device), merge=True,
                               delta_proj_weight=self.dt_projs_weight)
        return self.out_proj(self.out_norm(y.view(batch, H, W, E)))


class VSSBlock(nn.Module):
    """x = x + DropPath(SS2D(LN(x))); x = x + DropPath(MLP(LN(x))); (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, d_state: int = 1,
                 ssm_ratio: float = 2.0, conv_bias: bool = False, scan: str = "cross", device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.mixer = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, conv_bias=conv_bias, scan=scan, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=GELU, **dd)
        # one DropPath per branch (the official block calls one module twice; same draws, and each module then runs
        # once per forward, as timm's grad checkpointing contract expects)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_residual(x, self.drop_path(self.mixer(self.norm1(x))))
        return add_residual(x, self.drop_path2(self.mlp(self.norm2(x))))


@register_notrace_module  # torch.fx keeps it as one node: it chooses a layout by the input's size
class Downsample(nn.Module):
    """3x3 stride-2 conv (padding 1) then LayerNorm; (B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, **dd)
        self.norm = nn.LayerNorm(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # channels-last memory: the conv reorders its weight to match on every call ...
        if not torch.compiler.is_compiling() and x.numel() < self.conv.weight.numel():
            x = x.contiguous()  # ... unless copying the (smaller) activation is cheaper (the deeper stages at batch 1)
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class VMambaStage(nn.Module):
    """Optional downsample, then the blocks; (B, H, W, C) channels-last in and out."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool, drop_path_rates: List[float],
                 device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = Downsample(in_chs, out_chs, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[VSSBlock(out_chs, drop_path=drop_path_rates[i], **block_kwargs, **dd)
                                      for i in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class Stem(nn.Module):
    """conv 3x3/2 -> LN -> GELU -> conv 3x3/2 -> LN (official patch embed v2); NCHW in, (B, H/4, W/4, C) out."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = LayerNorm2d(dim // 2, eps=1e-5, **dd)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # the convs then keep channels-last: no copies to NHWC
        x = self.conv2(gelu(self.norm1(self.conv1(x))))
        return self.norm2(x.permute(0, 2, 3, 1))


@register_notrace_function  # torch.fx keeps it as one node: it branches on the input's shape
@torch.jit.ignore  # TorchScript'ed models call it as Python
def check_input(x: torch.Tensor, in_chans: int, family: str = "VMamba"):
    """Raise a clear error, naming `family`, for input that is not a floating (B, in_chans, H, W) batch, H, W >= 1."""
    if x.dim() != 4:
        raise ValueError(f"{family} expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{family} was built for {in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}, expected (B, {in_chans}, H, W))")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{family} needs H and W >= 1 pixel, got {tuple(x.shape[2:])}")
    if not x.is_floating_point():
        raise TypeError(f"{family} expects a floating-point image batch, got dtype {x.dtype}")


class ChannelsLastStagesMixin:
    """Feature extraction shared by models built as stem -> channels-last stages (B, H, W, C) -> norm -> head, with
    optional per-stage `feature_norms` (VMamba and its descendants, Spatial-Mamba). `family` names them in errors."""

    family = "VMamba"

    def _feature_map(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Stage `index`'s output (B, H, W, C) as the NCHW feature map, through its feature norm if any."""
        if self.feature_norms is not None:
            x = self.feature_norms[index](x)
        return x.permute(0, 3, 1, 2)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs as NCHW maps at strides 4, 8, 16, 32 (through `feature_norms` when the model has them).

        indices: last n stages if int, all if None, else the listed stages. norm=True passes the last stage's map
        through the final norm (the classifier's) instead. Returns the intermediates, or (final features,
        intermediates) where the final features are `forward_features(x)`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"{self.family} intermediates are NCHW only, got output_fmt={output_fmt!r}")
        check_input(x, self.in_chans, self.family)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                if norm and i == last:
                    intermediates.append(self.norm(x).permute(0, 3, 1, 2))
                else:
                    intermediates.append(self._feature_map(x, i))
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages (and feature norms) after the last wanted intermediate, the final norm if `prune_norm`,
        and the head; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if self.feature_norms is not None:
            self.feature_norms = self.feature_norms[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:  # the whole head goes: unused parameters would break DDP (find_unused_parameters=False)
            self.head = nn.Identity()
            self.num_classes = 0
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average pool and classifier; pre_logits=True returns the pooled (B, num_features) features.
        After `prune_intermediate_layers(prune_head=True)` there is no head and x is returned unchanged."""
        if isinstance(self.head, nn.Identity):
            return x
        return self.head(x, pre_logits=pre_logits)


class VMamba(ChannelsLastStagesMixin, nn.Module):
    """VMamba v2 classifier. Any input of at least 1x1 pixels works (odd and non-square sizes included).

    feature_norms=True adds a LayerNorm on every stage output returned by `forward_intermediates` (the official
    detection / segmentation backbone's `outnorm{i}`); the classifier has none. ssm_scan selects SS2D's scan (SCANS:
    "2pass" makes the model 2DVMamba, see `v2dmamba`).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (2, 2, 8, 2),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            ssm_conv_bias: bool = False,
            mlp_ratio: float = 4.0,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            feature_norms: bool = False,
            ssm_scan: str = "cross",
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        check_pool_type(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0], **dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info, start = [], [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(VMambaStage(
                dims[max(i - 1, 0)], dim, depth, downsample=i > 0, drop_path_rates=rates[start:start + depth],
                mlp_ratio=mlp_ratio, d_state=d_state, ssm_ratio=ssm_ratio, conv_bias=ssm_conv_bias, scan=ssm_scan,
                **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_norms = nn.ModuleList([nn.LayerNorm(d, **dd) for d in dims]) if feature_norms else None
        self.norm = nn.LayerNorm(dims[-1], **dd)
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module):
        """Official init: Linear weights trunc_normal(std 0.02) with zero biases (convs keep PyTorch's init)."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Nothing beyond timm's rule (no decay on 1-D parameters and biases), which is the official recipe's: its
        optimizer decays A_logs, dt_projs_bias and the projection weights and skips Ds, norms and biases."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^feature_norms\.(\d+)", (99999,)), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            check_pool_type(global_pool)
        if isinstance(self.head, nn.Identity):
            raise RuntimeError("the head was pruned by prune_intermediate_layers(prune_head=True); rebuild the model")
        reference = self.norm.weight  # the new classifier takes the model's device, dtype and train/eval mode
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.global_pool = self.head.global_pool.pool_type
        self.head.to(device=reference.device, dtype=reference.dtype).train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normed last stage map (B, num_features, ~H/32, ~W/32)."""
        check_input(x, self.in_chans)
        x = self.stem(x)
        x = self.stages(x)  # with grad checkpointing on, each stage checkpoints its blocks (not the stages as well)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official classifier keys (VSSM, ln2d): patch_embed.{0,2,5,7}.*,
# layers.{i}.blocks.{j}.{norm,op,norm2,mlp}.*, layers.{i}.downsample.{1,3}.* (the downsample *into* stage i + 1),
# classifier.{norm,head}.*. The official mmdet / mmseg backbone (MM_VSSM) has no classifier and adds outnorm{i}.*;
# its keys sit under `backbone.` in a detector's / segmentor's `state_dict`.

_OFFICIAL_RENAMES = [
    (r"^patch_embed\.0\.", "stem.conv1."),
    (r"^patch_embed\.2\.", "stem.norm1."),
    (r"^patch_embed\.5\.", "stem.conv2."),
    (r"^patch_embed\.7\.", "stem.norm2."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.conv2d\.", r"stages.\1.blocks.\2.mixer.conv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^outnorm(\d+)\.", r"feature_norms.\1."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head.fc."),
]
_OFFICIAL_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.([13])\.(.*)$")
_OFFICIAL_KEY = re.compile(r"^(patch_embed\.|layers\.\d+\.|classifier\.|outnorm\d+\.)")  # keys only official files have
_CHECKPOINT_WRAPPERS = ("model_ema", "state_dict_ema", "state_dict", "model")  # EMA weights first, like timm
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_NOT_BACKBONE = re.compile(r"^(neck|rpn_head|roi_head|decode_head|auxiliary_head|data_preprocessor)\.")


def released_checkpoint_globals() -> list:
    """What `torch.load(weights_only=True)` must allow for the released classification checkpoints: they hold the
    training config as a pickled `yacs.config.CfgNode` (a dict subclass). It is read as plain data (an OrderedDict of
    its entries); no yacs code runs and yacs need not be installed. Use with `torch.serialization.safe_globals`."""
    return [(PickledConfig, "yacs.config.CfgNode")]


class PickledConfig:
    """Stand-in for a pickled yacs CfgNode: unpickles as an OrderedDict of its entries (its attributes land in the
    OrderedDict's __dict__), the only dict type besides dict that the weights-only unpickler fills and builds."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _check_training_config_scan(checkpoint: Dict, model: nn.Module):
    """Raise ValueError when the training config saved beside the weights (official files: a yacs CfgNode read as a
    mapping) was for the other scan: 2DMamba's fork of VMamba sets MODEL.VSSM.USE_V2D (2DVMamba), VMamba's files lack
    it. The weights alone cannot tell the two apart (same keys and shapes); without a readable config nothing is
    checked."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        return
    model_config = config.get("MODEL")
    vssm = model_config.get("VSSM") if isinstance(model_config, dict) else None
    uses_2d_scan = bool(vssm.get("USE_V2D", False)) if isinstance(vssm, dict) else False
    model_scan = next((m.scan for m in model.modules() if isinstance(m, SS2D)), "cross")
    if uses_2d_scan != (model_scan == "2pass"):
        trained = "2DVMamba (MODEL.VSSM.USE_V2D set)" if uses_2d_scan else "VMamba (no MODEL.VSSM.USE_V2D)"
        wanted = "a v2dmamba_* model" if uses_2d_scan else "a vmamba_* model"
        raise ValueError(f"checkpoint's training config is a {trained} one, but this {type(model).__name__} scans with "
                         f"{model_scan!r}: create {wanted}")


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


def _rename_official_key(key: str) -> str:
    match = _OFFICIAL_DOWNSAMPLE.match(key)
    if match:
        part = "conv" if match[2] == "1" else "norm"
        return f"stages.{int(match[1]) + 1}.downsample.{part}.{match[3]}"
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Dict, model: VMamba) -> Dict[str, torch.Tensor]:
    """Convert an official VMamba v2 checkpoint or one of ours to this model's keys.

    Accepted: the official classifier (raw, or under `model_ema` / `state_dict_ema` / `state_dict` / `model`, keys
    with or without `module.` / `_orig_mod.`), the official detection / segmentation checkpoints (the `backbone.*`
    part of their `state_dict`; neck and heads are dropped), and ours. A classifier checkpoint loaded into a model with
    `feature_norms` gets those norms at their init (weight 1, bias 0), as the official mm backbone starts them. A
    training config saved beside the weights must be for this model's scan (VMamba, or 2DVMamba for `ssm_scan="2pass"`).

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`
    (another variant, the v0/v1 architecture, a truncated file). A classifier of another size is kept for timm to drop
    when `num_classes` differs from the pretrained cfg.
    """
    _check_training_config_scan(state_dict, model)
    state_dict = _unwrap_state_dict(state_dict)
    tensors = {_strip_prefixes(k): v for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and not _NOT_BACKBONE.match(k)}
    official = any(_OFFICIAL_KEY.match(k) for k in tensors)
    out = {(_rename_official_key(k) if official else k): v.contiguous() for k, v in tensors.items()}
    expected = model.state_dict()
    if model.feature_norms is not None and not any(k.startswith("feature_norms.") for k in out):
        for key, value in expected.items():
            if key.startswith("feature_norms."):
                out[key] = torch.ones(value.shape) if key.endswith(".weight") else torch.zeros(value.shape)
    if official and not any(k.startswith(("norm.", "head.")) for k in out):  # MM_VSSM: no classifier norm either
        out.update({k: v for k, v in expected.items() if k.startswith("norm.")})
    hint = " (of the official releases, only the v2 architecture, forward type v05_noz, is supported)" if official \
        else ""
    check_state_dict_fits(out, model, hint=hint)
    return out


def _create_vmamba(variant: str, pretrained: bool = False, model_cls: type = VMamba, **kwargs) -> VMamba:
    """`model_cls` (VMamba or a subclass) through timm's builder, official checkpoints through `checkpoint_filter_fn`."""
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 8, 2))))))
    with torch.serialization.safe_globals(released_checkpoint_globals()):  # the released .pth files
        return build_model_with_cfg(
            model_cls, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2401.10166", "paper_name": "VMamba: Visual State Space Model",
        "origin_url": "https://github.com/MzeroMiko/VMamba", **kwargs,
    }


# No hosted weights: download the official release (vssm1_tiny_0230s_ckpt_epoch_264.pth, vssm_small_0229_ckpt_epoch_222
# .pth, vssm_base_0229_ckpt_epoch_237.pth) and pass it, or its conversion by tools/convert_checkpoint.py, with
# pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "vmamba_tiny.in1k": _cfg(),
    "vmamba_small.in1k": _cfg(),
    "vmamba_base.in1k": _cfg(),
    "test_vmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s1l8] (official vmambav2v_tiny_224): 30.2M params, 4.9 GFLOPs, ImageNet-1k top-1 82.6."""
    args = dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768), ssm_ratio=1.0, drop_path_rate=0.2)
    return _create_vmamba("vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s2l15] (official vmambav2_small_224): 50.1M params, 8.7 GFLOPs, ImageNet-1k top-1 83.6."""
    args = dict(depths=(2, 2, 15, 2), dims=(96, 192, 384, 768), ssm_ratio=2.0, drop_path_rate=0.3)
    return _create_vmamba("vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s2l15] (official vmambav2_base_224): 88.6M params, 15.4 GFLOPs, ImageNet-1k top-1 83.9."""
    args = dict(depths=(2, 2, 15, 2), dims=(128, 256, 512, 1024), ssm_ratio=2.0, drop_path_rate=0.6)
    return _create_vmamba("vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def test_vmamba(pretrained: bool = False, **kwargs) -> VMamba:
    """A tiny VMamba for tests: every stage kind, SS2D with ssm_ratio 2; 0.32M params with a 1000-class head."""
    args = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 64), ssm_ratio=2.0)
    return _create_vmamba("test_vmamba", pretrained, **dict(args, **kwargs))
