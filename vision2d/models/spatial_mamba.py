"""Spatial-Mamba: hierarchical backbone whose structure-aware SSM fuses the selective scan's hidden states in 2D
(three dilated depthwise 3x3 kernels over border-replicated states) before the C read-out. Exact to the official
classifiers (github EdwardChasel/Spatial-Mamba @ 71221eb, `classification/models/spatialmamba.py`); the official
code is described in docs/specs/spatial_mamba.md.

Tensors inside stages are contiguous channels-last (B, H, W, C); the stem (computed in channels-last memory) and
returned features are NCHW; the downsamplings' and the stem's 1x1 convs run as matrix products over the channels.
The scan, the fusion of its states, the C read-out, the LayerNorm and the SiLU gate run as one op
(`state_scan_fusion`; on CPU one kernel call in which the states never leave a buffer of one channel block's
states), the fusion with one depthwise 11x11 kernel merged from the three dilated 3x3 kernels
(`merge_dilated_kernels`), as the official eval path does. Unlike the official module, which merges once on its
first eval call and keeps that kernel forever, the merged kernel is built from the current parameters (121 x E
numbers), in every forward where autograd records; without autograd it is kept between calls only while every
parameter it reads keeps its storage and version counter (`derived`; so are A and the folded BatchNorms): loading
weights, training or moving the model after an eval call can never serve a stale kernel.
Training uses the same merged kernel (the sum of the three convolutions is one convolution; its gradient flows back
to the three kernels and alpha). The depthwise convolutions run with their residual or activation fused
(`DepthwiseConv2d`: x + cpe(x), SiLU(conv(x)), the downsampling's ReLU(DWConv3x3/2(x))).
"""
import math
import re
from typing import Dict, Final, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, register_model, register_notrace_module
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..layers import DepthwiseConv2d, Linear, Mlp, derived, linear
from ..ops import depthwise_conv2d, merge_dilated_kernels, state_scan_fusion
from .vmamba import ChannelsLastStagesMixin, check_input, released_checkpoint_globals

__all__ = ["SpatialMamba", "checkpoint_filter_fn"]


def check_pool_type(global_pool: str):
    if global_pool not in ("avg", ""):
        raise ValueError(f"SpatialMamba supports global_pool 'avg' or '' (no pooling), got {global_pool!r}")


class ConvNormAct(nn.Module):
    """conv -> optional BatchNorm -> optional ReLU (the official ConvLayer; keys conv.*, norm.*); NCHW. In eval mode
    the BatchNorm is folded into the conv's weight and bias (from the current statistics, `derived`); the ReLU works
    in place (neither conv nor BatchNorm needs its output for the backward). Both spare a pass over a full-size map."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, norm: bool = True, act: bool = True, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                              bias=bias, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd) if norm else nn.Identity()
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    @torch.jit.unused
    def folded_weight_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The conv's weight and bias with the eval-mode BatchNorm folded in (from the current statistics)."""
        conv, norm = self.conv, self.norm

        def fold():
            scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            return conv.weight * scale[:, None, None, None], shift

        sources = [t for t in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
                   if t is not None]
        return derived(self, "folded", fold, *sources)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or self.training or not isinstance(self.norm, nn.BatchNorm2d):
            return self.act(self.norm(self.conv(x)))
        weight, bias = self.folded_weight_and_bias()
        conv = self.conv
        return self.act(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))

    def forward_pointwise(self, x: torch.Tensor) -> torch.Tensor:
        """A 1x1 conv on a channels-last map, (B, H, W, in_chs) -> (B, H, W, out_chs), as one matrix product over
        the channels (F.linear with the conv's weight; the same sums as the conv, and GEMMs use every thread at
        batch 1 where ATen's 1x1 convolution does not)."""
        if torch.jit.is_scripting() or self.training or not isinstance(self.norm, nn.BatchNorm2d):
            y = F.linear(x, self.conv.weight.flatten(1), self.conv.bias)
            return self.act(self.norm(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        weight, bias = self.folded_weight_and_bias()
        return self.act(linear(x, weight.flatten(1), bias))


@torch.jit.unused
def image_by_image(x: torch.Tensor, training: bool) -> bool:
    """Whether the stem / a downsampling runs image by image: in eager eval mode on a batch. Their wide maps (up to 8x
    the channels at full resolution) then stay in cache instead of streaming through memory (spatial_mamba_tiny,
    batch 16, 1 thread: 2818 -> 2365 ms); BatchNorm in eval mode works per image, so the result is the same. Training
    (batch statistics), TorchScript and compiled graphs keep the batch."""
    if training or torch.compiler.is_compiling():
        return False
    return x.shape[0] > 1


@register_notrace_module  # torch.fx: a leaf (it runs image by image by the batch size)
class Stem(nn.Module):
    """Stride-4 conv stem (official Stem): 3x3/2 -> residual pair of 3x3 -> 3x3/2 to 4d -> 1x1 to d, BatchNorm after
    every conv; NCHW in, (B, ceil(ceil(H/2)/2), ..., d) channels-last out."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        half = dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2, bias=False, **dd)
        self.conv2 = nn.Sequential(ConvNormAct(half, half, 3, bias=False, **dd),
                                   ConvNormAct(half, half, 3, bias=False, act=False, **dd))
        self.conv3 = nn.Sequential(ConvNormAct(half, 4 * dim, 3, stride=2, bias=False, **dd),
                                   ConvNormAct(4 * dim, dim, 1, bias=False, act=False, **dd))

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last memory: oneDNN's direct convolutions on it are 2-7x faster than on NCHW for these few input
        # channels, and the 1x1 conv's output is then a contiguous (B, H, W, d) map for the stages
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        x = self.conv3[0](self.conv2(x) + x)
        return self.conv3[1].forward_pointwise(x.permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not image_by_image(x, self.training):
            return self.forward_batch(x)
        return torch.cat([self.forward_batch(image) for image in x.split(1)])


@register_notrace_module  # torch.fx: a leaf (it runs image by image by the batch size)
class Downsample(nn.Module):
    """Official DownSampling: 1x1 to 8 dim (ReLU) -> depthwise 3x3/2 (ReLU) -> 1x1 to 2 dim (BatchNorm), convs with
    bias; (B, H, W, dim) -> (B, ceil(H/2), ceil(W/2), 2 dim)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        wide = 8 * dim
        self.conv = nn.Sequential(ConvNormAct(dim, wide, 1, norm=False, **dd),
                                  ConvNormAct(wide, wide, 3, stride=2, groups=wide, norm=False, **dd),
                                  ConvNormAct(wide, 2 * dim, 1, act=False, **dd))

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv[0].forward_pointwise(x)  # contiguous (B, H, W, 8 dim)
        depthwise = self.conv[1].conv  # ReLU(DWConv3x3/2(x)) on the channels-last map
        x = depthwise_conv2d(x, depthwise.weight, depthwise.bias, stride=2, activation="relu")
        return self.conv[2].forward_pointwise(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not image_by_image(x, self.training):
            return self.forward_batch(x)
        return torch.cat([self.forward_batch(image) for image in x.split(1)])


class StateFusion(nn.Module):
    """The structure-aware state fusion's parameters: h' = sum_i alpha_i DWConv3x3_{dilation d_i}(h) over
    border-replicated states, dilations (1, 3, 5), applied as one merged depthwise 11x11 kernel (`merged_kernel`) by
    the mixer's `state_scan_fusion`."""

    dilations: Final = (1, 3, 5)

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.alpha = nn.Parameter(torch.ones(3, **dd))

    def merged_kernel(self) -> torch.Tensor:
        """(E, 11, 11): alpha_0 k3 on the centre 3x3, alpha_1 k3_1 on the dilation-3 taps, alpha_2 k3_2 on the
        dilation-5 taps, the centres added (the official `_merge_weight`), from the current parameters."""
        alpha = self.alpha
        kernels = [alpha[0] * self.kernel_3, alpha[1] * self.kernel_3_1, alpha[2] * self.kernel_3_2]
        return merge_dilated_kernels(kernels, list(self.dilations))


@register_notrace_module  # torch.fx: a leaf (its shapes size the scan)
class StructureAwareSSM(nn.Module):
    """The structure-aware SSM mixer (official StructureAwareSSM); (B, H, W, C) in and out.

    in_proj to (x, z) -> depthwise 3x3 conv -> SiLU = u -> (dt, B, C) = x_proj(u), delta = dt_proj(dt) -> every
    state of the selective scan in row-major order -> state fusion -> y = C h' + D u -> LayerNorm (out_norm) ->
    * SiLU(z) (all of these one `state_scan_fusion` call) -> out_proj. Parameters keep the official names and
    shapes: x_proj_weight (R + 2N, E), dt_projs_weight (E, R), dt_projs_bias (E), A_logs (E, N), Ds (E), with
    E = 2 dim, R = ceil(dim / 16), N = d_state = 1.
    """

    def __init__(self, dim: int, d_state: int = 1, expand: int = 2, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if d_state != 1:  # the official fusion and read-out are only defined for one state per channel
            raise ValueError(f"Spatial-Mamba's state fusion needs d_state=1 (one state per channel), got {d_state}")
        inner = expand * dim
        self.d_inner, self.d_state, self.dt_rank = inner, d_state, math.ceil(dim / 16)
        R, N = self.dt_rank, d_state
        self.in_proj = Linear(dim, 2 * inner, bias=False, **dd)
        self.conv = DepthwiseConv2d(inner, 3, activation="silu", **dd)  # SiLU(DWConv3x3(x))
        self.x_proj_weight = nn.Parameter(torch.empty(R + 2 * N, inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(inner, R, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(inner, N, **dd))
        self.Ds = nn.Parameter(torch.empty(inner, **dd))
        self.state_fusion = StateFusion(inner, **dd)
        self.out_norm = nn.LayerNorm(inner, **dd)
        self.out_proj = Linear(inner, dim, bias=False, **dd)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        """Official init: x_proj U(+-1/sqrt(E)), dt_proj U(+-R^-1/2), dt bias the inverse softplus of dt log-uniform in
        [dt_min, dt_max], A = -(1..N), D = 1."""
        inner, R, N = self.d_inner, self.dt_rank, self.d_state
        nn.init.uniform_(self.x_proj_weight, -inner ** -0.5, inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -R ** -0.5, R ** -0.5)
        device = self.Ds.device
        dt = torch.exp(torch.rand(inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=device)).expand(inner, N))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, _ = x.shape
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        # in_proj as its x and z halves: both contiguous, so the conv reads x in place
        weight_x, weight_z = self.in_proj.weight.chunk(2)  # (one concatenation in the backward)
        x, z = linear(x, weight_x), linear(x, weight_z)
        u = self.conv(x)
        dts, Bs, Cs = linear(u, self.x_proj_weight.to(u.dtype)).split([R, N, N], dim=-1)
        delta = linear(dts, self.dt_projs_weight.to(dts.dtype))
        if torch.jit.is_scripting():
            A, kernel = self.scan_constants()
        else:
            A, kernel = self.eval_scan_constants()
        # every state (row-major scan, softplus(delta + bias)), fused, read out by C, plus D u, out_norm, * silu(z)
        y = state_scan_fusion(u, delta, A, Bs, Cs, kernel, self.Ds, self.dt_projs_bias.float(), True,
                              self.out_norm.weight, self.out_norm.bias, self.out_norm.eps, z, None)
        return self.out_proj(y)

    def scan_constants(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(A = -exp(A_logs) in float32 (E, N), the merged fusion kernel (E, 11, 11)) from the current parameters."""
        return -torch.exp(self.A_logs.float()), self.state_fusion.merged_kernel()

    @torch.jit.unused
    def eval_scan_constants(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """`scan_constants`, kept while the parameters are unchanged where no gradient is recorded (`derived`)."""
        fusion = self.state_fusion
        return derived(self, "scan_constants", self.scan_constants, self.A_logs, fusion.alpha, fusion.kernel_3,
                       fusion.kernel_3_1, fusion.kernel_3_2)


class SpatialMambaBlock(nn.Module):
    """x += DWConv3x3(x); x += DropPath(SSM(LN(x))); x += DWConv3x3(x); x += DropPath(MLP(LN(x))); (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, d_state: int = 1, device=None,
                 dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cpe1 = DepthwiseConv2d(dim, 3, residual=True, **dd)  # x + DWConv3x3(x) in one pass
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.mixer = StructureAwareSSM(dim, d_state=d_state, **dd)
        self.cpe2 = DepthwiseConv2d(dim, 3, residual=True, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe1(x)
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        x = self.cpe2(x)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class SpatialMambaStage(nn.Module):
    """Optional downsample (the official previous layer's), then the blocks; (B, H, W, C) channels-last."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool, drop_path_rates: List[float],
                 device=None, dtype=None, **block_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = Downsample(in_chs, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[SpatialMambaBlock(out_chs, drop_path=drop_path_rates[i], **block_kwargs, **dd)
                                      for i in range(depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SpatialMamba(ChannelsLastStagesMixin, nn.Module):
    """Spatial-Mamba classifier. Any input of at least 1x1 pixels works (odd and non-square sizes included).

    dims must double from stage to stage (the official downsampling always doubles the width). feature_norms=True
    adds a LayerNorm on every stage output returned by `forward_intermediates` (the official detection /
    segmentation backbone's `outnorm{i}`); the classifier has none.
    """

    family = "SpatialMamba"

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (2, 4, 8, 4),
            dims: Tuple[int, ...] = (64, 128, 256, 512),
            d_state: int = 1,
            mlp_ratio: float = 4.0,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            feature_norms: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have the same length")
        if any(b != 2 * a for a, b in zip(dims, dims[1:])):
            raise ValueError(f"Spatial-Mamba's downsampling doubles the width: dims must double, got {dims}")
        check_pool_type(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = Stem(in_chans, dims[0], **dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info, start = [], [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(SpatialMambaStage(
                dims[max(i - 1, 0)], dim, depth, downsample=i > 0, drop_path_rates=rates[start:start + depth],
                mlp_ratio=mlp_ratio, d_state=d_state, **dd))
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
        """Nothing beyond timm's rule (no decay on 1-D parameters and biases), which is the official recipe's: it
        decays A_logs (E, 1), the fusion kernels and the projection weights, and skips Ds, alpha, norms and biases."""
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^feature_norms\.(\d+)", (99999,)), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Checkpoint every block (as timm's hierarchical models do): each runs once more in the backward."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """A new classifier; global_pool '' (timm's convention, with num_classes 0) returns the unpooled map."""
        if global_pool is not None:
            check_pool_type(global_pool)
            self.global_pool = global_pool
        if isinstance(self.head, nn.Identity):
            raise RuntimeError("the head was pruned by prune_intermediate_layers(prune_head=True); rebuild the model")
        self.num_classes = num_classes
        reference = next(self.parameters())
        self.head.reset(num_classes, pool_type=global_pool)  # the new layer on the model's device and dtype:
        self.head.fc.to(device=reference.device, dtype=reference.dtype)
        self.head.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normed last stage map (B, num_features, ~H/32, ~W/32)."""
        check_input(x, self.in_chans, self.family)
        return self.norm(self.stages(self.stem(x))).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official classifier keys (SpatialMamba): patch_embed.{conv1,conv2.{0,1},conv3.{0,1}}.
# {conv,norm}.*, layers.{i}.blocks.{j}.{cpe1,ln_1,self_attention,cpe2,ln_2,mlp}.*, layers.{i}.downsample.conv.{0,1,2}.
# {conv,norm}.* (the downsample *into* stage i + 1), norm.*, head.*. The official mmdet / mmseg backbone
# (Backbone_SpatialMamba) has no norm / head and adds outnorm{i}.*; its keys sit under `backbone.` in a detector's /
# segmentor's `state_dict`.

_OFFICIAL_RENAMES = [
    (r"^patch_embed\.", "stem."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.ln_1\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.ln_2\.", r"stages.\1.blocks.\2.norm2."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.self_attention\.conv2d\.", r"stages.\1.blocks.\2.mixer.conv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.self_attention\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^outnorm(\d+)\.", r"feature_norms.\1."),
    (r"^head\.", "head.fc."),
]
_OFFICIAL_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.*)$")
_OFFICIAL_KEY = re.compile(r"^(patch_embed\.|layers\.\d+\.|outnorm\d+\.)")  # keys only official files have
# the official evaluation (main.py --eval) reports `model` as the network's accuracy (the EMA one second) and the
# official detection / segmentation backbones load `model`: it wins over `model_ema`
_CHECKPOINT_WRAPPERS = ("model", "state_dict", "model_ema", "state_dict_ema")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_NOT_BACKBONE = re.compile(r"^(neck|rpn_head|roi_head|decode_head|auxiliary_head|data_preprocessor)\.")


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
        return f"stages.{int(match[1]) + 1}.downsample.{match[2]}"
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Dict, model: SpatialMamba) -> Dict[str, torch.Tensor]:
    """Convert an official Spatial-Mamba checkpoint or one of ours to this model's keys.

    Accepted: the official classifier (raw, or under `model` / `state_dict` / `model_ema` / `state_dict_ema`, keys
    with or without `module.` / `_orig_mod.`); when a file holds both `model` and `model_ema` (the released training
    checkpoints), `model` is taken, as the official evaluation and detection / segmentation backbones do. Also the
    official detection / segmentation checkpoints (the `backbone.*` part of their `state_dict`; neck and heads are
    dropped) and ours. A classifier checkpoint loaded into a model with `feature_norms` gets those norms at their init
    (weight 1, bias 0), as the official backbone starts them; a backbone checkpoint gets the final norm at its init and
    (`check_state_dict_fits`) the model's own classifier. Load released `.pth` files weights-only within
    `torch.serialization.safe_globals(released_checkpoint_globals())` (their pickled yacs config is read as plain
    data); timm's pretrained loader for these models does so.

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`
    (another variant, a truncated file). As for every family (`check_state_dict_fits`), timm then adapts a 3-channel
    stem to another `in_chans` and replaces the classifier when `num_classes` differs from the file's.
    """
    state_dict = _unwrap_state_dict(state_dict)
    tensors = {_strip_prefixes(k): v for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and not _NOT_BACKBONE.match(k)}
    official = any(_OFFICIAL_KEY.match(k) for k in tensors)
    out = {(_rename_official_key(k) if official else k): v.contiguous() for k, v in tensors.items()}
    expected = model.state_dict()
    at_init = []  # LayerNorms the checkpoint does not have, started at weight 1, bias 0
    if model.feature_norms is not None and not any(k.startswith("feature_norms.") for k in out):
        at_init.append("feature_norms.")
    if official and not any(k.startswith(("norm.", "head.")) for k in out):  # an official mm backbone: no classifier
        at_init.append("norm.")
    for key, value in expected.items():
        if key.startswith(tuple(at_init)):
            out[key] = torch.ones(value.shape) if key.endswith(".weight") else torch.zeros(value.shape)
    hint = (f" (model dims {[s.blocks[0].norm1.normalized_shape[0] for s in model.stages]}, depths "
            f"{[len(s.blocks) for s in model.stages]})")
    check_state_dict_fits(out, model, hint=hint)
    return out


def _create_spatial_mamba(variant: str, pretrained: bool = False, **kwargs) -> SpatialMamba:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 4, 8, 4))))))
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    file = overlay.get("file")
    # timm's file loader would pick `model_ema` over `model`: a .pth file goes whole to checkpoint_filter_fn, which
    # takes `model` as the official evaluation does
    whole_file = pretrained and file and not str(file).endswith(".safetensors") and "state_dict" not in overlay
    with torch.serialization.safe_globals(released_checkpoint_globals()):  # the released .pth files
        if whole_file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
            kwargs["pretrained_cfg_overlay"] = dict(overlay, state_dict=checkpoint)
        model = build_model_with_cfg(
            SpatialMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    if whole_file:  # the model's pretrained cfg does not keep the checkpoint alive
        for module in (model, getattr(model, "model", None)):
            getattr(module, "pretrained_cfg", {}).pop("state_dict", None)
    return model


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1.conv", "classifier": "head.fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2410.15091",
        "paper_name": "Spatial-Mamba: Effective Visual State Space Models via Structure-aware State Fusion",
        "origin_url": "https://github.com/EdwardChasel/Spatial-Mamba", **kwargs,
    }


# No hosted weights: download the official release (Google Drive links in the official README) and pass it, or its
# conversion by tools/convert_checkpoint.py, with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "spatial_mamba_tiny.in1k": _cfg(),
    "spatial_mamba_small.in1k": _cfg(),
    "spatial_mamba_base.in1k": _cfg(),
    "test_spatial_mamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def spatial_mamba_tiny(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-T: 26.7M params, 4.5 GFLOPs, ImageNet-1k top-1 83.5."""
    args = dict(depths=(2, 4, 8, 4), dims=(64, 128, 256, 512), drop_path_rate=0.2)
    return _create_spatial_mamba("spatial_mamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def spatial_mamba_small(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-S: 43.1M params, 7.1 GFLOPs, ImageNet-1k top-1 84.6."""
    args = dict(depths=(2, 4, 21, 5), dims=(64, 128, 256, 512), drop_path_rate=0.3)
    return _create_spatial_mamba("spatial_mamba_small", pretrained, **dict(args, **kwargs))


@register_model
def spatial_mamba_base(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """Spatial-Mamba-B: 95.7M params, 15.8 GFLOPs, ImageNet-1k top-1 85.3."""
    args = dict(depths=(2, 4, 21, 5), dims=(96, 192, 384, 768), drop_path_rate=0.5)
    return _create_spatial_mamba("spatial_mamba_base", pretrained, **dict(args, **kwargs))


@register_model
def test_spatial_mamba(pretrained: bool = False, **kwargs) -> SpatialMamba:
    """A tiny Spatial-Mamba for tests (the parity fixture's shape): dims (8, 16, 32, 64), depths (1, 1, 2, 1);
    0.21M params with a 1000-class head."""
    args = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), drop_path_rate=0.1)
    return _create_spatial_mamba("test_spatial_mamba", pretrained, **dict(args, **kwargs))
