"""LocalMamba (LocalVMamba): VMamba's hierarchical skeleton whose SS2D mixer scans every block in its own four
directions, found by the paper's search among row-major, column-major and 2x2 / 7x7 window scans, each also reversed,
and weighs each direction's output by a channel attention before summing. Exact to the official classifiers
(github hunto/LocalMamba, `classification/lib/models/local_vmamba.py`, `local_vssm_tiny` / `local_vssm_small`).

Tensors inside stages are channels-last (B, H, W, C); returned features are NCHW. The scan directions are index maps
(`local_scan_orders`) read by `selective_scan`. A window scan pads the map at the bottom and right to whole windows
and, as in the official code, the padded zeros are scan steps (the state decays through them); they are extra
sequence positions after the map's pixels, filled with zeros, so no copy of the map in scan order is made.

One deliberate difference: the official code un-permutes the column-major directions ("v", "v_flip") as if the map
were square, which puts their outputs at the wrong pixels when H != W. This model uses the true inverse, so it equals
the official code on square maps and the official code with that un-permute corrected on the others.
"""
import re
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, register_model, register_notrace_module
from timm.models._manipulate import checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..layers import Linear, linear
from ..ops import direction_readout, selective_scan
from ..ops.scan_orders import local_scan_orders
from .vmamba import SS2D, VMamba, add_residual, check_pool_type, _NOT_BACKBONE, _strip_prefixes

__all__ = ["LocalMamba", "checkpoint_filter_fn", "TINY_DIRECTIONS", "SMALL_DIRECTIONS"]

DIRECTION_CHOICES = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")  # official MultiScan choices

# The searched directions of the published models, one list per block over all stages (official local_vssm_tiny /
# local_vssm_small arguments).
TINY_DIRECTIONS = (
    ("h", "h_flip", "w7", "w7_flip"), ("h_flip", "v_flip", "w2", "w2_flip"),
    ("h_flip", "v_flip", "w2_flip", "w7"), ("h_flip", "v", "v_flip", "w2"),
    ("h", "h_flip", "v_flip", "w2_flip"), ("h_flip", "v_flip", "w2", "w2_flip"), ("h", "w2_flip", "w7", "w7_flip"),
    ("h", "h_flip", "v", "v_flip"), ("h", "v_flip", "w7", "w7_flip"), ("h_flip", "v", "w2", "w7_flip"),
    ("v", "v_flip", "w2", "w7_flip"), ("h", "h_flip", "v_flip", "w2_flip"), ("v_flip", "w2_flip", "w7", "w7_flip"),
    ("h_flip", "v_flip", "w2_flip", "w7_flip"), ("h_flip", "v", "w7", "w7_flip"),
)
SMALL_DIRECTIONS = (
    ("h", "v", "v_flip", "w7_flip"), ("h", "h_flip", "v", "w7"),
    ("h_flip", "v", "v_flip", "w7"), ("h_flip", "v", "w2_flip", "w7"),
    ("h_flip", "v", "w2_flip", "w7"), ("h_flip", "v_flip", "w2", "w7_flip"), ("h_flip", "v", "v_flip", "w7"),
    ("h", "v", "v_flip", "w7"), ("h", "v", "v_flip", "w7"), ("h", "v", "v_flip", "w7_flip"),
    ("h", "h_flip", "v", "v_flip"), ("h", "v", "v_flip", "w2"), ("v", "v_flip", "w2_flip", "w7"),
    ("h", "h_flip", "v", "w2"), ("h_flip", "v", "v_flip", "w7_flip"), ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "v_flip", "w7_flip"), ("h", "v", "v_flip", "w7_flip"), ("h", "h_flip", "v_flip", "w7"),
    ("h_flip", "v_flip", "w2_flip", "w7"), ("h_flip", "v", "v_flip", "w7_flip"), ("v", "v_flip", "w7", "w7_flip"),
    ("h", "v", "v_flip", "w7_flip"), ("h_flip", "v", "v_flip", "w2"), ("h", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v", "w7"), ("h", "h_flip", "w7", "w7_flip"), ("h", "v_flip", "w2", "w2_flip"),
    ("h", "v_flip", "w2", "w7"), ("h", "v", "v_flip", "w7_flip"), ("h_flip", "v", "w2_flip", "w7"),
    ("h_flip", "v_flip", "w7", "w7_flip"), ("h", "v", "w7", "w7_flip"),
)


def pixel_mean_of_layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over pixels of LayerNorm(x) without its affine, (B, L, K, E) -> (B, K, E), from each pixel's mean mu and
    1 / std r: sum_p r_p (x_p - mu_p) / L. x is read three times and the normalised map never written: the r-weighted
    sum is, per sample, one batched row-vector product over the K directions of x's strided (K, L, E) view (no copy
    of x; one product per sample, as a product over (B, K) would copy x). 1 thread, K = 4: 56x56x192 at batch 1
    0.70 ms, at batch 16 27 ms (one (L, K E) product per sample keeping the K diagonal blocks: 0.86 / 29 ms).
    Statistics in float32 at least."""
    batch, length, directions, channels = x.shape
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    mean = x.mean(-1, dtype=stats_dtype)  # (B, L, K)
    mean_square = torch.linalg.vector_norm(x, dim=-1, dtype=stats_dtype).square() / channels
    rstd = torch.rsqrt((mean_square - mean.square()).clamp_min(0) + eps)
    row_weights = rstd.to(x.dtype).transpose(1, 2).contiguous().unsqueeze(2)  # (B, K, 1, L), dense rows for bmm
    weighted = torch.stack([torch.bmm(w, sample.transpose(0, 1)) for w, sample in zip(row_weights, x)]).squeeze(2)
    return (weighted - (mean * rstd).sum(1).unsqueeze(-1).to(x.dtype)) / length


class DirectionAttention(nn.Module):
    """Per-direction channel gate (official BiAttn) and the sum over directions: sum_k t_k * sigmoid(select(GELU(
    reduce(mean over pixels of LN(t_k))))).

    (B, L, K, E) in, (B, L, E) out: one gate of E channels per sample and direction, from the same weights for all K.
    Without autograd (inference) the mixer calls `inference_gate` and `vision2d.ops.direction_readout` instead, which
    sums, normalises and gates in one pass (`LocalSS2D.forward`).
    """

    def __init__(self, dim: int, reduce_ratio: float = 0.125, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, **dd)
        self.global_reduce = nn.Linear(dim, int(dim * reduce_ratio), **dd)
        self.channel_select = nn.Linear(int(dim * reduce_ratio), dim, **dd)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, K, E) gates from the pixel means of LN(t_k)."""
        return torch.sigmoid(self.channel_select(F.gelu(self.global_reduce(pooled))))

    def inference_gate(self, x: torch.Tensor) -> torch.Tensor:
        """`gate` of x (B, L, K, E) without writing LN(x): the pixel means from per-pixel statistics
        (`pixel_mean_of_layer_norm`, the affine applied after the mean; float32 / float64 outside autocast, which the
        statistics' weighted sum needs), else the plain composition."""
        if x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
            return self.gate(self.norm(x).mean(1))
        return self.gate(pixel_mean_of_layer_norm(x, self.norm.eps) * self.norm.weight + self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.gate(self.norm(x).mean(1)).unsqueeze(1)).sum(2)


@register_notrace_module  # torch.fx (timm's feature extraction) keeps the mixer whole: it reshapes by input size
class LocalSS2D(SS2D):
    """LocalMamba's SS2D; (B, H, W, C) in and out.

    in_proj (no bias) to x and a gate z -> depthwise 3x3 conv -> SiLU -> selective scan along the block's four
    `directions` (per-direction x_proj, dt_proj, A, D as VMamba's SS2D) -> per-direction channel attention, summed ->
    LayerNorm -> times SiLU(z) -> out_proj (no bias).
    """

    def __init__(self, dim: int, directions: Sequence[str], d_state: int = 16, ssm_ratio: float = 2.0,
                 conv_bias: bool = True, device=None, dtype=None):
        if len(directions) != 4 or any(d not in DIRECTION_CHOICES for d in directions):
            raise ValueError(f"LocalMamba: each block scans 4 directions out of {DIRECTION_CHOICES}, got "
                             f"{list(directions)}")
        super().__init__(dim, d_state=d_state, ssm_ratio=ssm_ratio, conv_bias=conv_bias, device=device, dtype=dtype)
        dd = dict(device=device, dtype=dtype)
        self.directions = tuple(directions)
        self.in_proj = Linear(dim, 2 * self.d_inner, bias=False, **dd)  # x and the gate z
        self.attn = DirectionAttention(self.d_inner, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, _ = x.shape
        K, E, R, N = len(self.directions), self.d_inner, self.dt_rank, self.d_state
        # in_proj's two halves as two products: x dense, as the convolution reads it (a strided half is copied)
        weight = self.in_proj.weight
        z = linear(x, weight[E:])
        u = self.conv(linear(x, weight[:E])).view(batch, H * W, E)  # SiLU(DWConv3x3(x)); x's half freed at once
        order = local_scan_orders(H, W, self.directions, device=u.device)
        # window padding: zero pixels after the map's, so u = 0 and, projected from it (no biases), delta before its
        # bias = B = C = 0. Compiled graphs pad always (by 0 if need be): no branch on sizes that may be symbolic
        if torch.compiler.is_compiling() or order.shape[1] > H * W:
            u = F.pad(u, (0, 0, 0, order.shape[1] - H * W))
        L = u.shape[1]
        x_dbl = linear(u, self.x_proj_weight.reshape(K * (R + 2 * N), E)).view(batch, L, K, R + 2 * N)
        dts, Bs, Cs = x_dbl.split([R, N, N], dim=-1)
        A, D, delta_bias = self.scan_constants() if torch.jit.is_scripting() else self.eval_scan_constants()
        # the scan projects dts by dt_proj as it runs (delta (batch, L, K, E) is never stored)
        y = selective_scan(u, dts, A, Bs, Cs, D, delta_bias, delta_softplus=True, order=order, merge=False,
                           delta_proj_weight=self.dt_projs_weight)
        # the map's positions: a view in eager; compiled graphs copy them, as a view's strides are contiguous only
        # without padding, a relation of the sizes symbolic shapes would fix at the traced size
        y = y.narrow_copy(1, 0, H * W) if torch.compiler.is_compiling() else y[:, :H * W]
        if torch.is_grad_enabled():  # the composition, whose backward writes fewer full-size gradients
            return self.out_proj(self.out_norm(self.attn(y)).view(batch, H, W, E) * F.silu(z))
        # inference: the gates, then the gated sum, out_norm and the SiLU gate in one pass
        norm = self.out_norm
        return self.out_proj(direction_readout(y, self.attn.inference_gate(y), z.view(batch, H * W, E), norm.weight,
                                               norm.bias, norm.eps).view(batch, H, W, E))


class LocalVSSBlock(nn.Module):
    """x = x + DropPath(LocalSS2D(LN(x))); no MLP; (B, H, W, C)."""

    def __init__(self, dim: int, directions: Sequence[str], drop_path: float = 0.0, device=None, dtype=None,
                 **mixer_kwargs):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.mixer = LocalSS2D(dim, directions, **mixer_kwargs, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_residual(x, self.drop_path(self.mixer(self.norm1(x))))


@register_notrace_module  # torch.fx keeps it as one node: it pads by the input's size
class PatchMerging(nn.Module):
    """Zero-pad H, W to even, stack each 2x2 neighbourhood on channels ((0,0), (1,0), (0,1), (1,1)), LayerNorm, linear
    (no bias); (B, H, W, C_in) -> (B, ceil(H/2), ceil(W/2), C_out)."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(4 * in_chs, **dd)
        self.reduction = Linear(4 * in_chs, out_chs, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        # F.pad copies the map even when it pads nothing; compiled graphs pad always (no branch on symbolic sizes),
        # to 2 ((H + 1) // 2), not H + H % 2: both halves of the padded map are then plainly (H + 1) // 2 tall, and
        # symbolic shapes (export, dynamic compile) carry no nested floor divisions with relations to decide
        if torch.compiler.is_compiling() or H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, (W + 1) // 2 * 2 - W, 0, (H + 1) // 2 * 2 - H))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


@register_notrace_module  # torch.fx keeps it as one node: it checks the input's size
class PatchEmbed(nn.Module):
    """4x4 stride-4 conv then LayerNorm; NCHW in (H, W >= 4), (B, H // 4, W // 4, C) out."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, **dd)
        self.norm = nn.LayerNorm(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] < self.conv.stride[0] or x.shape[3] < self.conv.stride[1]:
            raise ValueError(f"the model needs H and W >= {self.conv.stride[0]} pixels (one patch), got "
                             f"{tuple(x.shape[2:])}")
        # channels-last input: the conv writes channels-last, so the norm reads the NHWC view without a copy (1 thread,
        # conv + norm at 224x224: batch 1 1.5 vs 2.9 ms, batch 16 10.5 vs 55 ms)
        return self.norm(self.conv(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1))


class MergingStage(nn.Module):
    """Optional patch merging, then the given blocks; (B, H, W, C) channels-last in and out."""

    def __init__(self, in_chs: int, out_chs: int, blocks: Sequence[nn.Module], downsample: bool, device=None,
                 dtype=None):
        super().__init__()
        self.downsample = PatchMerging(in_chs, out_chs, device=device, dtype=dtype) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MergingVMamba(VMamba):
    """VMamba's model interface (features, intermediates, pruning, grad checkpointing, head) on the official v1
    skeleton that LocalMamba and MSVMamba share: 4x4 patch embedding, patch merging between stages, the family's
    blocks. Subclasses build their blocks and call `_build`."""

    def _build(self, in_chans: int, num_classes: int, dims: Sequence[int], depths: Sequence[int],
               blocks: Sequence[nn.Module], drop_rate: float, global_pool: str, feature_norms: bool, device=None,
               dtype=None):
        """Stem, stages (depths[i] of `blocks` each, in order), feature norms, final norm and head."""
        dd = dict(device=device, dtype=dtype)
        check_pool_type(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False
        self.stem = PatchEmbed(in_chans, dims[0], **dd)
        stages, self.feature_info, start = [], [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stages.append(MergingStage(dims[max(i - 1, 0)], dim, blocks[start:start + depth], downsample=i > 0, **dd))
            start += depth
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_norms = nn.ModuleList([nn.LayerNorm(d, **dd) for d in dims]) if feature_norms else None
        self.norm = nn.LayerNorm(dims[-1], **dd)
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)


def block_dims_and_rates(depths: Sequence[int], dims: Sequence[int], drop_path_rate: float) -> List[Tuple[int, float]]:
    """(channels, drop path rate) of every block over all stages; rates rise linearly from 0 to drop_path_rate."""
    if len(depths) != len(dims):
        raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    return list(zip([dim for depth, dim in zip(depths, dims) for _ in range(depth)], rates))


class LocalMamba(MergingVMamba):
    """LocalVMamba classifier. Any input of at least 4x4 pixels works.

    directions: one list of 4 scan directions (DIRECTION_CHOICES) per block, over all stages in order.
    feature_norms=True adds the official detection backbone's `outnorm{i}` LayerNorm on every returned stage output.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            depths: Tuple[int, ...] = (2, 2, 9, 2),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            directions: Sequence[Sequence[str]] = TINY_DIRECTIONS,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            ssm_conv_bias: bool = True,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            feature_norms: bool = False,
            device=None,
            dtype=None,
    ):
        nn.Module.__init__(self)  # VMamba's methods, not its layers
        dd = dict(device=device, dtype=dtype)
        if len(directions) != sum(depths):
            raise ValueError(f"LocalMamba needs one direction list per block: {sum(depths)} for depths {depths}, got "
                             f"{len(directions)}")
        blocks = [LocalVSSBlock(dim, block_directions, drop_path=rate, d_state=d_state, ssm_ratio=ssm_ratio,
                                conv_bias=ssm_conv_bias, **dd)
                  for (dim, rate), block_directions in zip(block_dims_and_rates(depths, dims, drop_path_rate),
                                                           directions)]
        self._build(in_chans, num_classes, dims, depths, blocks, drop_rate, global_pool, feature_norms, **dd)


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official keys (VSSM): patch_embed.{0,2}.*, layers.{i}.blocks.{j}.{norm,op}.*
# (op.multi_scan.attn.* the direction attention), layers.{i}.downsample.{norm,reduction}.* (the merging *into* stage
# i + 1), classifier.{norm,head}.*; the detection backbone (Backbone_LocalVSSM) has no classifier and adds outnorm{i}.*,
# under `backbone.` in a detector's `state_dict`.

_OFFICIAL_RENAMES = [
    (r"^patch_embed\.0\.", "stem.conv."),
    (r"^patch_embed\.2\.", "stem.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.conv2d\.", r"stages.\1.blocks.\2.mixer.conv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.multi_scan\.attn\.", r"stages.\1.blocks.\2.mixer.attn."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.", r"stages.\1.blocks.\2.mixer."),
    (r"^outnorm(\d+)\.", r"feature_norms.\1."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head.fc."),
]
_OFFICIAL_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.*)$")
_OFFICIAL_KEY = re.compile(r"^(patch_embed\.|layers\.\d+\.|classifier\.|outnorm\d+\.)")
# the official evaluation and detection backbone read `state_dict` (released files), else `model` (training
# checkpoints; their `ema_model` is None: the published recipe trains without EMA)
_CHECKPOINT_WRAPPERS = ("state_dict", "model")


def _rename_official_key(key: str, value: torch.Tensor) -> Tuple[str, torch.Tensor]:
    match = _OFFICIAL_DOWNSAMPLE.match(key)
    if match:
        return f"stages.{int(match[1]) + 1}.downsample.{match[2]}", value
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key, value


def convert_state_dict(checkpoint: Dict, model: MergingVMamba, wrappers: Sequence[str],
                       rename_official: Callable[[str, torch.Tensor], Tuple[str, torch.Tensor]]
                       ) -> Dict[str, torch.Tensor]:
    """The checkpoint filter of the v1-skeleton families: the first of `wrappers` holding a dict (else the checkpoint
    itself), its tensors only, `module.` / `_orig_mod.` / `backbone.` prefixes stripped and a detector's or segmentor's
    neck and heads dropped, official keys (recognised by their `patch_embed.` / `layers.` / `classifier.` / `outnorm`
    names) through `rename_official`. A model with `feature_norms` loading a classifier checkpoint gets them at init
    (weight 1, bias 0); a backbone-only official checkpoint may lack the classifier (its final norm and head keep the
    model's). Raises ValueError naming every missing, unexpected or mis-shaped key when the result does not fit
    `model` (`vision2d.checkpoint.check_state_dict_fits`, which also lets timm adapt the first conv and the head)."""
    for key in wrappers:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    tensors = {_strip_prefixes(k): v for k, v in checkpoint.items()
               if isinstance(v, torch.Tensor) and not _NOT_BACKBONE.match(k)}
    official = any(_OFFICIAL_KEY.match(k) for k in tensors)
    out = dict(rename_official(k, v) if official else (k, v) for k, v in tensors.items())
    out = {k: v.contiguous() for k, v in out.items()}
    expected = model.state_dict()
    if model.feature_norms is not None and not any(k.startswith("feature_norms.") for k in out):
        for key, value in expected.items():
            if key.startswith("feature_norms."):
                out[key] = torch.ones(value.shape) if key.endswith(".weight") else torch.zeros(value.shape)
    if official and not any(k.startswith(("norm.", "head.")) for k in out):  # an mm backbone: no classifier norm either
        out.update({k: v for k, v in expected.items() if k.startswith("norm.")})
    check_state_dict_fits(out, model)
    return out


def checkpoint_filter_fn(state_dict: Dict, model: LocalMamba) -> Dict[str, torch.Tensor]:
    """Convert an official LocalVMamba checkpoint or one of ours to this model's keys.

    Accepted: the released file (`state_dict`), a training checkpoint (`model`), a raw state dict (keys with or without
    `module.` / `_orig_mod.`), the official detection checkpoints (the `backbone.*` part of their `state_dict`; neck and
    heads dropped), and ours. A classifier checkpoint loaded into a model with `feature_norms` gets those norms at their
    init (weight 1, bias 0). Only tensors are read; the file must load with `torch.load(weights_only=True)`.

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`
    (another variant or direction list, the search supernet, a truncated file).
    """
    return convert_state_dict(state_dict, model, _CHECKPOINT_WRAPPERS, _rename_official_key)


def _create_localmamba(variant: str, pretrained: bool = False, **kwargs) -> LocalMamba:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (2, 2, 9, 2))))))
    return build_model_with_cfg(
        LocalMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2403.09338",
        "paper_name": "LocalMamba: Visual State Space Model with Windowed Selective Scan",
        "origin_url": "https://github.com/hunto/LocalMamba", **kwargs,
    }


# No hosted weights: download the official release (local_vssm_small.ckpt; the tiny weights were never released) and
# pass it, or its conversion by tools/convert_checkpoint.py, with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "localmamba_tiny.in1k": _cfg(),
    "localmamba_small.in1k": _cfg(),
    "test_localmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), crop_pct=1.0),
})


@register_model
def localmamba_tiny(pretrained: bool = False, **kwargs) -> LocalMamba:
    """LocalVMamba-T (official local_vssm_tiny): 25.5M params, ImageNet-1k top-1 82.7 (weights never released)."""
    args = dict(depths=(2, 2, 9, 2), dims=(96, 192, 384, 768), directions=TINY_DIRECTIONS, drop_path_rate=0.2)
    return _create_localmamba("localmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def localmamba_small(pretrained: bool = False, **kwargs) -> LocalMamba:
    """LocalVMamba-S (official local_vssm_small): 49.7M params, ImageNet-1k top-1 83.7."""
    args = dict(depths=(2, 2, 27, 2), dims=(96, 192, 384, 768), directions=SMALL_DIRECTIONS, drop_path_rate=0.2)
    return _create_localmamba("localmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def test_localmamba(pretrained: bool = False, **kwargs) -> LocalMamba:
    """A tiny LocalMamba for tests (the official parity fixture's model): every direction choice, windows that pad;
    0.19M params with a 1000-class head."""
    args = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64),
                directions=tuple(TINY_DIRECTIONS[i] for i in (0, 1, 3, 12, 9)))
    return _create_localmamba("test_localmamba", pretrained, **dict(args, **kwargs))
