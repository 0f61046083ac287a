"""PlainMamba's detection backbone: the plain model inside a ViT-Adapter (official `PlainMambaAdapter`, github
ChenhongyiYang/PlainMamba `downstream/mmdetection/mmdet/models/backbones/plain_mamba_adapter.py` and
`adapter_modules.py`), which turns its single stride-16 map into the stride 4 / 8 / 16 / 32 pyramid of the paper's
Mask R-CNN and RetinaNet results.

A convolutional spatial prior module (SPM) gives maps at strides 4-32; in each of four interactions an injector
(multi-scale deformable attention from the plain tokens to the SPM's stride 8/16/32 tokens) feeds the SPM into the
plain tokens, a range of plain blocks runs, and an extractor (deformable attention back, with a convolutional FFN)
updates the SPM tokens. Outputs: SPM maps plus the plain map resized (x4, x2, x1, x0.5), each batch-normed.

Module and parameter names are the official ones (`spm`, `level_embed`, `interactions`, `up`, `ad_norm1..4`); the plain
model is the timm model under `model` (its final norm is unused, as the official `final_norm=False`, and removed).
The deformable attention runs mmcv's CUDA kernel on CUDA and mmcv's PyTorch implementation of the same math on the CPU.
"""
import math
from functools import partial
from typing import List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction, multi_scale_deformable_attn_pytorch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import DropPath
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models import plainmamba
from .backbone import read_checkpoint

LayerNorm = partial(nn.LayerNorm, eps=1e-6)
# official configs: arch -> (timm model, deform_num_heads, interaction_indexes)
ADAPTER_ARCHS = {
    "l1": ("plainmamba_l1", 6, [[0, 5], [6, 11], [12, 17], [18, 23]]),
    "l2": ("plainmamba_l2", 6, [[0, 5], [6, 11], [12, 17], [18, 23]]),
    "l3": ("plainmamba_l3", 8, [[0, 8], [9, 17], [18, 26], [27, 35]]),
    "test": ("test_plainmamba", 2, [[0, 0], [1, 1], [2, 2]]),
}


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR); query (B, Lq, C), reference points (B, Lq, 1, 2) in [0, 1]
    (x, y), value tokens (B, sum H_l W_l, C) of the levels `spatial_shapes` (n_levels, 2) -> (B, Lq, C)."""

    def __init__(self, dim: int, n_levels: int, n_heads: int, n_points: int, ratio: float = 1.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"MSDeformAttn: dim {dim} is not divisible by {n_heads} heads")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.value_dim = int(dim * ratio)
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, self.value_dim)
        self.output_proj = nn.Linear(self.value_dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Official init: offsets start on rings of radius 1..n_points around the reference point, one direction per
        head; uniform attention; Xavier value / output projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1) * torch.arange(1, self.n_points + 1).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index):
        B, Lq, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value).view(B, value.shape[1], heads, self.value_dim // heads)
        offsets = self.sampling_offsets(query).view(B, Lq, heads, levels, points, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Lq, heads, levels * points), -1)
        weights = weights.view(B, Lq, heads, levels, points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # (W, H) per level
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if value.is_cuda:
            out = MultiScaleDeformableAttnFunction.apply(value.float(), spatial_shapes, level_start_index,
                                                         locations.float(), weights.float(), 64)
        else:
            out = multi_scale_deformable_attn_pytorch(value, spatial_shapes, locations, weights)
        return self.output_proj(out.to(query.dtype))


class ConvFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv on each of the three SPM levels (strides 8 / 16 / 32 of a stride-16 H x W map) ->
    GELU -> fc2; tokens (B, 21 / 4 * H * W, C)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)  # the official key dwconv.dwconv
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        B, _, C = x.shape
        levels, start = [], 0
        for h, w in ((2 * H, 2 * W), (H, W), (H // 2, W // 2)):
            level = x[:, start:start + h * w].transpose(1, 2).reshape(B, C, h, w)
            levels.append(self.dwconv.dwconv(level).flatten(2).transpose(1, 2))
            start += h * w
        return self.drop(self.fc2(self.drop(self.act(torch.cat(levels, dim=1)))))


class Injector(nn.Module):
    """Plain tokens += gamma * deformable attention over the SPM tokens (3 levels)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, init_values: float):
        super().__init__()
        self.query_norm, self.feat_norm = LayerNorm(dim), LayerNorm(dim)
        self.attn = MSDeformAttn(dim, n_levels=3, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index):
        attn = self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                         level_start_index)
        return query + self.gamma * attn


class Extractor(nn.Module):
    """SPM tokens += deformable attention over the plain tokens (1 level), then += DropPath(ConvFFN(LN(.)))."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, with_cffn: bool,
                 cffn_ratio: float, drop_path: float):
        super().__init__()
        self.query_norm, self.feat_norm = LayerNorm(dim), LayerNorm(dim)
        self.attn = MSDeformAttn(dim, n_levels=1, n_heads=num_heads, n_points=n_points, ratio=deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = LayerNorm(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index, H, W):
        query = query + self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                                  level_start_index)
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), H, W))
        return query


class InteractionBlock(nn.Module):
    """Injector, a range of plain blocks, extractor (and, in the last interaction, two extra extractors)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, init_values: float, drop_path: float,
                 with_cffn: bool, cffn_ratio: float, deform_ratio: float, extra_extractor: bool):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, deform_ratio, init_values)
        extractor = partial(Extractor, dim, num_heads, n_points, deform_ratio, with_cffn, cffn_ratio, drop_path)
        self.extractor = extractor()
        self.extra_extractors = nn.Sequential(extractor(), extractor()) if extra_extractor else None

    def forward(self, x, c, blocks, inputs_inject, inputs_extract):
        """x: plain tokens (B, H, W, C); c: SPM tokens (B, 21 / 4 * H * W, C)."""
        B, H, W, C = x.shape
        x = self.injector(x.reshape(B, H * W, C), inputs_inject[0], c, *inputs_inject[1:]).view(B, H, W, C)
        x = blocks(x)
        tokens = x.reshape(B, H * W, C)
        for extractor in [self.extractor] + list(self.extra_extractors or []):
            c = extractor(c, inputs_extract[0], tokens, *inputs_extract[1:], H, W)
        return x, c


class SpatialPriorModule(nn.Module):
    """ResNet-style conv stem to strides 4, 8, 16, 32 with 1x1 projections to `dim`; NCHW in, (c1 map, c2, c3, c4
    token sequences) out."""

    def __init__(self, inplanes: int, dim: int):
        super().__init__()

        def conv_bn_relu(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: torch.Tensor):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return (self.fc1(c1), *(fc(c).flatten(2).transpose(1, 2) for fc, c in
                                ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))))


def reference_points(shapes: Sequence[Tuple[int, int]], device) -> torch.Tensor:
    """Pixel centres of each (H, W) level, normalised to [0, 1] as (x, y): (1, sum H W, 1, 2)."""
    points = []
    for H, W in shapes:
        y, x = torch.meshgrid(torch.linspace(0.5, H - 0.5, H, device=device) / H,
                              torch.linspace(0.5, W - 0.5, W, device=device) / W, indexing="ij")
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
    return torch.cat(points)[None, :, None]


def deform_inputs(h: int, w: int, device):
    """(reference points, spatial shapes, level start index) of the injector (plain stride-16 queries over the SPM's
    strides 8 / 16 / 32) and of the extractor (SPM queries over the plain stride-16 map) for an h x w image."""
    spm_shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]

    def levels(shapes):
        shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
        return shapes, torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))

    inject = (reference_points([(h // 16, w // 16)], device), *levels(spm_shapes))
    extract = (reference_points(spm_shapes, device), *levels([(h // 16, w // 16)]))
    return inject, extract


@MODELS.register_module()
class PlainMambaAdapter(BaseModule):
    """PlainMamba with the official ViT-Adapter for mmdet: four maps of `embed_dim` channels at strides 4, 8, 16, 32.

    Args:
        arch: 'l1', 'l2', 'l3' ('test' for tests); sets the plain model and the official deform_num_heads and
            interaction_indexes (either may be overridden).
        interaction_indexes: [first, last] plain block of each interaction.
        drop_path_rate: stochastic depth of the plain blocks (and of the extractors' FFNs, as the official code).
        norm_eval: keep BatchNorm layers (SPM, patch embedding, adapter norms) in eval mode while training.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)``: a PlainMamba classifier (official or ours; the adapter
            keeps its init, as the official fine-tuning starts it) or an official PlainMambaAdapter detector
            checkpoint (everything loads). Input sides must be multiples of 32 (mmdet's pad_size_divisor=32).
    """

    def __init__(self, arch: str = "l1", interaction_indexes: Optional[List[List[int]]] = None,
                 deform_num_heads: Optional[int] = None, n_points: int = 4, conv_inplane: int = 64,
                 init_values: float = 0.0, with_cffn: bool = True, cffn_ratio: float = 0.25, deform_ratio: float = 1.0,
                 add_vit_feature: bool = True, use_extra_extractor: bool = True, drop_path_rate: float = 0.0,
                 norm_eval: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if arch not in ADAPTER_ARCHS:
            raise ValueError(f"PlainMambaAdapter: unknown arch {arch!r}; choose one of {sorted(ADAPTER_ARCHS)}")
        if init_cfg is not None and (init_cfg.get("type") != "Pretrained" or "checkpoint" not in init_cfg):
            raise ValueError(f"PlainMambaAdapter: init_cfg must be dict(type='Pretrained', checkpoint=PATH), got "
                             f"{init_cfg}")
        self.model_name, heads, indexes = ADAPTER_ARCHS[arch]
        self.interaction_indexes = interaction_indexes or indexes
        self.model = timm.create_model(self.model_name, num_classes=0, drop_path_rate=drop_path_rate)
        self.model.norm = nn.Identity()  # official final_norm=False
        depth, dim = len(self.model.blocks), self.model.num_features
        if [i for a, b in self.interaction_indexes for i in range(a, b + 1)] != list(range(depth)):
            raise ValueError(f"PlainMambaAdapter: interaction_indexes {self.interaction_indexes} must cover the "
                             f"{depth} blocks of {self.model_name} in order, each once")
        self.add_vit_feature = add_vit_feature
        self.norm_eval = norm_eval
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, deform_num_heads or heads, n_points, init_values, drop_path_rate, with_cffn,
                             cffn_ratio, deform_ratio,
                             extra_extractor=use_extra_extractor and i == len(self.interaction_indexes) - 1)
            for i in range(len(self.interaction_indexes))])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        for i in range(1, 5):
            self.add_module(f"ad_norm{i}", nn.BatchNorm2d(dim))
        for module in (self.up, self.spm, self.interactions):
            module.apply(self._init_adapter_weights)
        for module in self.interactions.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)
        self.feature_info = [dict(num_chs=dim, reduction=4 * 2 ** i) for i in range(4)]

    @staticmethod
    @torch.no_grad()
    def _init_adapter_weights(module: nn.Module):
        """Official adapter init: Linear trunc_normal(0.02) / bias 0; norms 1 / 0; convs N(0, 2 / fan_out)."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            module.weight.normal_(0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> tuple:
        h, w = x.shape[2:]
        if x.dim() != 4 or h % 32 or w % 32:
            raise ValueError(f"PlainMambaAdapter needs (B, 3, H, W) input with H and W multiples of 32 (mmdet "
                             f"pad_size_divisor=32), got {tuple(x.shape)}")
        inputs_inject, inputs_extract = deform_inputs(h, w, x.device)
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        tokens = self.model.embed(x)  # (B, H, W, C), H = h / 16
        B, H, W, C = tokens.shape
        for (first, last), interaction in zip(self.interaction_indexes, self.interactions):
            tokens, c = interaction(tokens, c, self.model.blocks[first:last + 1], inputs_inject, inputs_extract)
        sizes = [4 * H * W, H * W, H * W // 4]
        c2, c3, c4 = (t.transpose(1, 2).reshape(B, C, *s) for t, s in
                      zip(c.split(sizes, dim=1), [(2 * H, 2 * W), (H, W), (H // 2, W // 2)]))
        c1 = self.up(c2) + c1
        if self.add_vit_feature:
            x3 = tokens.permute(0, 3, 1, 2)
            c1 = c1 + F.interpolate(x3, scale_factor=4, mode="bilinear", align_corners=False)
            c2 = c2 + F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False)
            c3 = c3 + x3
            c4 = c4 + F.interpolate(x3, scale_factor=0.5, mode="bilinear", align_corners=False)
        return tuple(getattr(self, f"ad_norm{i + 1}")(f) for i, f in enumerate((c1, c2, c3, c4)))

    def load_checkpoint_state(self, checkpoint: dict) -> List[str]:
        """Load a classifier or official detector state dict (see init_cfg); returns the adapter keys left at init
        (all of them for a classifier). Raises ValueError when the plain backbone does not fit."""
        state_dict = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), dict) else checkpoint
        adapter = {plainmamba.ADAPTER_KEY.sub(r"\2", k): v for k, v in state_dict.items()
                   if plainmamba.ADAPTER_KEY.match(k)}
        with torch.device("meta"):
            reference = timm.create_model(self.model_name)
        plain = plainmamba.checkpoint_filter_fn(state_dict, reference)
        plain = {f"model.{k}": v for k, v in plain.items() if not k.startswith(("head.", "norm."))}
        own = self.state_dict()
        unexpected = sorted(k for k in adapter if k not in own)
        misshaped = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                           for k, v in adapter.items() if k in own and v.shape != own[k].shape)
        if unexpected or misshaped:
            raise ValueError(f"PlainMambaAdapter ({self.model_name}): the checkpoint's adapter does not fit: "
                             f"unexpected {unexpected[:12]}, mis-shaped {misshaped[:12]}")
        missing, _ = self.load_state_dict({**plain, **adapter}, strict=False)
        if adapter and missing:
            raise ValueError(f"PlainMambaAdapter ({self.model_name}): the checkpoint's adapter lacks {missing[:12]}")
        return missing

    def init_weights(self):
        """Load ``init_cfg``'s checkpoint; without init_cfg keep the initialisation."""
        if self.init_cfg is None:
            return
        path = self.init_cfg["checkpoint"]
        at_init = self.load_checkpoint_state(read_checkpoint(path, self.model_name))
        message = f"PlainMambaAdapter: loaded {self.model_name} from {path}"
        if at_init:
            message += f"; the adapter ({len(at_init)} tensors) keeps its initialisation"
        print_log(message, logger="current")
        self._is_init = True

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
