"""PlainMamba: a plain (non-hierarchical) backbone of selective-scan blocks over one stride-16 token map, each block
scanning the map along four continuous zig-zag paths with direction-aware updates. Exact to the official classifiers
(github ChenhongyiYang/PlainMamba, `mmcls/plain_mamba_dev/models/plain_mamba/`); the spec is
`docs/specs/plainmamba.md`.

Tensors inside the blocks are channels-last (B, H', W', C) with H' = ceil(ceil(H / 2) / 8) (likewise W'); the patch
embedding and returned features are NCHW. Being plain, the model has a single stride: `feature_info`,
`forward_intermediates` and `features_only` list every block, each a (B, C, H', W') map at stride 16 (no pyramid;
the OpenMMLab wrapper adds the official multi-scale adapters).
"""
import math
import re
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, register_model, register_notrace_function, register_notrace_module
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models._registry import generate_default_cfgs

from ..checkpoint import check_state_dict_fits
from ..ops import selective_scan
from ..ops.scan_orders import scan_moves, zigzag_scan_orders

__all__ = ["PlainMamba", "checkpoint_filter_fn"]

NUM_DIRECTIONS = 4  # the four zig-zag scans
NUM_MOVES = 5  # start, right, left, up, down: one learned B offset each
PATCH_SIZE = 16  # a 7x7 stride-2 stem conv, then an 8x8 stride-8 projection
PRETRAIN_GRID = (14, 14)  # the position embedding's grid (224 / 16)

@register_notrace_function
def check_input(x: torch.Tensor, in_chans: int):
    """Raise a clear error for input that is not a floating (B, in_chans, H, W) batch with H, W >= 1."""
    if x.dim() != 4:
        raise ValueError(f"PlainMamba expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"PlainMamba was built for {in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)}, expected (B, {in_chans}, H, W))")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"PlainMamba needs H and W >= 1 pixel, got {tuple(x.shape[2:])}")
    if not x.is_floating_point():
        raise TypeError(f"PlainMamba expects a floating-point image batch, got dtype {x.dtype}")


def _zigzag_scan_indices(H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    orders = zigzag_scan_orders(H, W)
    steps = orders.argsort(dim=1)
    moves = scan_moves(orders, H, W).gather(1, steps)
    return orders.to(device), steps.to(device), moves.to(device)


@lru_cache(maxsize=32)
def _stored_zigzag_scan_indices(H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    with torch.inference_mode(False):  # ordinary tensors, usable by autograd after an inference-mode call
        return _zigzag_scan_indices(H, W, device)


def zigzag_scan_indices(H: int, W: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan indices of an H x W map, each (4, H * W) int64: `orders` (step t of direction k visits pixel
    orders[k, t]), `steps` (the step at which direction k visits pixel p: the inverse permutation) and `moves` (the
    move code of that step, indexing `direction_Bs`). Built once per size and device; afresh while compiling (sizes
    may be symbolic, and the graph should not break on a cache) and on the meta device."""
    if torch.compiler.is_compiling() or device.type == "meta":
        return _zigzag_scan_indices(H, W, device)
    return _stored_zigzag_scan_indices(H, W, device)


@register_notrace_module  # torch.fx (timm's feature extraction) keeps it whole: it reads the map's shape
class PlainMamba2D(nn.Module):
    """The PlainMamba mixer; (B, H, W, C) in and out.

    in_proj -> (x, z); u = SiLU(depthwise 7x7 conv(x)); four zig-zag selective scans of u sharing x_proj, dt_proj,
    A and D, summed; y * SiLU(z) -> out_proj. Official pairing: at step t of direction k the scan reads u at pixel
    o_k[t] but the step size, B and C computed at pixel t of the row-major sequence, and B gets the learned offset
    `direction_Bs[move of step t]`. With the shared op, which reads every per-pixel input at the pixel it scans, this
    is exact by gathering (dt, B, C) per direction from pixel steps_k[p] (the step at which direction k visits p).
    The official code adds the dt_proj bias twice (dt_proj(dt) and again as the scan's delta bias); so does this.
    Parameters keep the official shapes: in_proj (2E, C), conv (E, 1, 7, 7), x_proj (R + 2N, E), dt_proj (E, R),
    A_log (E, N), D (E), out_proj (C, E), direction_Bs (5, N), with E = expand * C, R = ceil(C / 16), N = d_state.
    """

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, conv_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        inner = expand * dim
        self.d_inner, self.d_state, self.dt_rank = inner, d_state, math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, **dd)
        self.conv = nn.Conv2d(inner, inner, conv_size, padding=conv_size // 2, groups=inner, **dd)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(self.dt_rank, inner, **dd)
        self.A_log = nn.Parameter(torch.empty(inner, d_state, **dd))
        self.D = nn.Parameter(torch.empty(inner, **dd))
        self.out_proj = nn.Linear(inner, dim, **dd)
        self.direction_Bs = nn.Parameter(torch.empty(NUM_MOVES, d_state, **dd))
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
        """Official init: dt_proj weight U(+-R^-1/2), its bias the inverse softplus of dt log-uniform in [dt_min,
        dt_max], S4D-real A = -(1..N), D = 1, direction_Bs trunc_normal(std 0.02)."""
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        device = self.D.device
        dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device))
                         .expand_as(self.A_log))
        self.D.fill_(1.0)
        nn.init.trunc_normal_(self.direction_Bs, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, _ = x.shape
        K, E, R, N, L = NUM_DIRECTIONS, self.d_inner, self.dt_rank, self.d_state, H * W
        x, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).reshape(batch, L, E)
        orders, steps, moves = zigzag_scan_indices(H, W, u.device)
        # per direction k at pixel p: (dt, B, C) computed at pixel steps[k, p] of the row-major sequence
        x_dbl = self.x_proj(u)[:, steps.t().reshape(-1)].view(batch, L, K, R + 2 * N)
        dts, Bs, Cs = x_dbl.split([R, N, N], dim=-1)
        Bs = Bs + self.direction_Bs.to(Bs.dtype)[moves].transpose(0, 1)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            u, self.dt_proj(dts), A.expand(K, E, N), Bs, Cs, self.D.float().expand(K, E),
            self.dt_proj.bias.float().expand(K, E), delta_softplus=True, order=orders, merge=True)
        return self.out_proj(y.view(batch, H, W, E) * F.silu(z))


class PlainMambaBlock(nn.Module):
    """x = x + DropPath(PlainMamba2D(LN(x))), then, in blocks with `dwconv`, x = GELU(BN(depthwise 3x3 conv(x)))
    (replacing x, no residual); (B, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, dwconv: bool = False, d_state: int = 16, expand: int = 2,
                 conv_size: int = 7, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, eps=1e-5, **dd)
        self.mixer = PlainMamba2D(dim, d_state=d_state, expand=expand, conv_size=conv_size, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dwconv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd), nn.BatchNorm2d(dim, **dd), nn.GELU(),
        ) if dwconv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm(x)))
        if self.dwconv is not None:
            x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


@register_notrace_module  # pads by the input's shape
class ConvPatchEmbed(nn.Module):
    """Conv 7x7/2 (64 channels) -> BN -> ReLU, `num_convs` x [conv 3x3 -> BN -> ReLU], zero padding at the bottom and
    right to a multiple of 8, conv 8x8/8 to `dim`; NCHW in, (B, dim, ceil(ceil(H/2)/8), ceil(ceil(W/2)/8)) out."""

    def __init__(self, in_chans: int, dim: int, num_convs: int, stem_chs: int = 64, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False, **dd),
                                  nn.BatchNorm2d(stem_chs, **dd), nn.ReLU(inplace=True))
        convs = []
        for _ in range(num_convs):
            convs += [nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd), nn.BatchNorm2d(stem_chs, **dd),
                      nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        self.proj_size = PATCH_SIZE // 2
        self.proj = nn.Conv2d(stem_chs, dim, self.proj_size, stride=self.proj_size, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.stem(x))
        H, W, size = x.shape[2], x.shape[3], self.proj_size
        # padding to the next multiple by floor division, not `-H % size`: a symbolic modulo in the size makes
        # torch.compile's training graphs fail with dynamic shapes (PyTorch 2.14 cannot turn it into tensor math)
        x = F.pad(x, (0, (W + size - 1) // size * size - W, 0, (H + size - 1) // size * size - H))
        return self.proj(x)


@register_notrace_function
def add_pos_embed(x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    """x (B, H', W', C) + the (1, 14 * 14, C) position embedding resized to (H', W')."""
    return x + resize_pos_embed(pos_embed, PRETRAIN_GRID, x.shape[1:3]).view(1, *x.shape[1:])


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], new_grid: Tuple[int, int]) -> torch.Tensor:
    """(1, h * w, C) position embedding of a (h, w) grid -> (1, H' * W', C) for `new_grid`, bicubic
    (align_corners=False) as the official `resize_pos_embed`; unchanged when the grids are equal. Compiled graphs
    always resample (at equal grids bicubic weights are exactly 0, 1, 0, 0: the same values), so that symbolic sizes
    need no guard on the grid."""
    if not torch.compiler.is_compiling() and tuple(grid) == tuple(new_grid):  # no size comparison while tracing
        return pos_embed
    C = pos_embed.shape[-1]
    pos_embed = pos_embed.reshape(1, *grid, C).permute(0, 3, 1, 2)
    pos_embed = F.interpolate(pos_embed, size=new_grid, mode="bicubic", align_corners=False)
    return pos_embed.flatten(2).transpose(1, 2)


class PlainMamba(nn.Module):
    """PlainMamba classifier. Any input of at least 1x1 pixels works (odd and non-square sizes included; the position
    embedding is resized bicubically from its 14x14 grid).

    feature_norms=True gives every block but the last a LayerNorm (eps 1e-6) on the feature map it returns
    (forward_intermediates / features_only), the official segmentation backbone's `norm_layer{i}` (the last block's map
    passes through the final norm); `prune_intermediate_layers` keeps those of the wanted blocks only. The classifier
    has none.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: int = 192,
            depth: int = 24,
            num_convs_patch_embed: int = 1,
            dwconv_blocks: Sequence[int] = (0,),
            d_state: int = 16,
            expand: int = 2,
            conv_size: int = 7,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            feature_norms: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if any(not 0 <= i < depth for i in dwconv_blocks):
            raise ValueError(f"dwconv_blocks {tuple(dwconv_blocks)} must be block indices in 0..{depth - 1}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim
        self.num_layers = depth
        self.grad_checkpointing = False

        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, num_convs_patch_embed, **dd)
        self.pos_embed = nn.Parameter(torch.empty(1, PRETRAIN_GRID[0] * PRETRAIN_GRID[1], embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[
            PlainMambaBlock(embed_dim, drop_path=rates[i], dwconv=i in dwconv_blocks, d_state=d_state, expand=expand,
                            conv_size=conv_size, **dd)
            for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=PATCH_SIZE, module=f"blocks.{i}") for i in range(depth)]
        self.feature_norms = nn.ModuleDict({str(i): nn.LayerNorm(embed_dim, eps=1e-6, **dd)
                                            for i in range(depth - 1 if feature_norms else 0)})
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd)
        self.head = ClassifierHead(embed_dim, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Official training init: every Linear trunc_normal(std 0.02) with zero bias (the mmcls config re-initialises
        all of them, x_proj and dt_proj included), then the classifier N(0, 0.01) (mmcls' LinearClsHead); LayerNorms
        1 / 0, pos_embed trunc_normal(std 0.02); convs keep PyTorch's init, the SSM parameters their own."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.head.fc, nn.Linear):
            nn.init.normal_(self.head.fc.weight, std=0.01)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """As the official recipe: no decay on pos_embed, A_log, D and direction_Bs (norms and biases: timm's rule)."""
        return {"pos_embed"} | {n for n, _ in self.named_parameters()
                                if n.rsplit(".", 1)[-1] in ("A_log", "D", "direction_Bs")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^feature_norms\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if isinstance(self.head, nn.Identity):
            raise RuntimeError("the head was pruned by prune_intermediate_layers(prune_head=True); rebuild the model")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        reference = next(self.parameters())
        self.head.reset(num_classes, pool_type=global_pool)  # the new layer on the model's device, dtype and mode
        self.head.fc.to(device=reference.device, dtype=reference.dtype)
        self.head.train(self.training)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> tokens with position embedding, channels-last (B, H', W', C)."""
        check_input(x, self.in_chans)
        return self.pos_drop(add_pos_embed(self.patch_embed(x).permute(0, 2, 3, 1), self.pos_embed))

    def _feature_map(self, x: torch.Tensor, index: int, norm: bool) -> torch.Tensor:
        """Block `index`'s output (B, H', W', C) as the returned NCHW map: through its feature norm if it has one,
        through the final norm if it is the last block (or `norm`), else raw."""
        if str(index) in self.feature_norms:
            x = self.feature_norms[str(index)](x)
        elif norm or index == self.num_layers - 1:
            x = self.norm(x)
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
        """Block outputs as NCHW maps (B, C, H', W'), all at stride 16 (a plain model has one resolution).

        indices: last n blocks if int, all if None, else the listed blocks. Block maps are raw except: a block with a
        feature norm returns its output through it, and the last block's through the final norm (as the official
        backbone returns them); norm=True puts every other map through the final norm too. Returns the
        intermediates, or (final features, intermediates) where the final features are `forward_features(x)`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"PlainMamba intermediates are NCHW only, got output_fmt={output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        x = self.embed(x)
        for i, block in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            if i in take_indices:
                intermediates.append(self._feature_map(x, i, norm))
        if intermediates_only:
            return intermediates
        return self.norm(x).permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last wanted intermediate, the feature norms of unwanted blocks, the head, and the
        final norm if `prune_norm` and the last block is gone (while it stays, the final norm is part of its feature
        map). Returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        for key in [k for k in self.feature_norms if int(k) not in take_indices]:
            del self.feature_norms[key]
        if prune_norm and max_index < self.num_layers - 1:
            self.norm = nn.Identity()
        if prune_head:  # the whole head goes: unused parameters would break DDP (find_unused_parameters=False)
            self.head = nn.Identity()
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> final-normed token map (B, num_features, H', W'), H' = ceil(ceil(H / 2) / 8)."""
        x = self.embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over the tokens (the official neck) and the linear classifier; pre_logits=True returns the pooled
        (B, num_features) features. After `prune_intermediate_layers(prune_head=True)` x is returned unchanged."""
        if isinstance(self.head, nn.Identity):
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints -> ours. Official keys (mmcls ImageClassifier): backbone.patch_embed.{stem,convs,projection}.*,
# backbone.pos_embed, backbone.layers.{i}.{norm,mamba,dw}.*, backbone.ln1.*, backbone.norm_layer{i}.* (segmentation),
# head.fc.*. Training with EMACheckpointHook adds buffers ema_<param name, dots as underscores>: the hook swaps the EMA
# weights into the parameters before every evaluation and checkpoint, so the plain keys hold the EMA weights the
# official evaluation used, and the ema_* buffers the live ones.

_OFFICIAL_RENAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.mamba\.conv2d\.", r"blocks.\1.mixer.conv."),
    (r"^layers\.(\d+)\.mamba\.", r"blocks.\1.mixer."),
    (r"^layers\.(\d+)\.dw\.", r"blocks.\1.dwconv."),
    (r"^layers\.(\d+)\.", r"blocks.\1."),
    (r"^ln1\.", "norm."),
    (r"^norm_layer(\d+)\.", r"feature_norms.\1."),
]
_OFFICIAL_KEY = re.compile(r"^(layers\.\d+\.|ln1\.|norm_layer\d+\.|patch_embed\.projection\.)")
_CHECKPOINT_WRAPPERS = ("state_dict", "model")
_STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.")
_NOT_BACKBONE = re.compile(r"^(ema_|neck\.|rpn_head\.|roi_head\.|bbox_head\.|decode_head\.|auxiliary_head\.|"
                           r"data_preprocessor\.)")
# the official detection backbone (PlainMambaAdapter) around the plain model: handled by the mm adapter
ADAPTER_KEY = re.compile(r"^(backbone\.)?(spm\.|interactions\.|level_embed$|up\.|ad_norm\d\.)")


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
    for pattern, repl in _OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: Dict, model: PlainMamba) -> Dict[str, torch.Tensor]:
    """Convert an official PlainMamba checkpoint or one of ours to this model's keys.

    Accepted: the released classifiers (mmcv runner files: `{"meta", "state_dict", "optimizer"}`, or the raw state
    dict; keys with or without `module.` / `_orig_mod.`; the EMA hook's `ema_*` buffers are dropped, the plain keys
    being the EMA weights the official evaluation used), the official segmentation checkpoints (`backbone.*` of their
    `state_dict`, `norm_layer{i}` as feature norms; heads dropped), and ours. From the detection checkpoints this
    takes the plain backbone (`ADAPTER_KEY` parts are the mm adapter's); their final norm is absent (the detector
    does not use it) and is set to weight 1, bias 0. Feature norms absent from the checkpoint (a classifier loaded
    into a segmentation backbone) start at weight 1, bias 0, as the official segmentation backbone starts them.

    Raises ValueError listing the missing, unexpected and mis-shaped keys when the checkpoint does not fit `model`.
    """
    state_dict = _unwrap_state_dict(state_dict)
    tensors = {_strip_prefixes(k): v for k, v in state_dict.items()
               if isinstance(v, torch.Tensor) and not _NOT_BACKBONE.match(k) and not ADAPTER_KEY.match(k)}
    official = any(_OFFICIAL_KEY.match(k) for k in tensors)
    out = {(_rename_official_key(k) if official else k): v.contiguous() for k, v in tensors.items()}
    detector = any(ADAPTER_KEY.match(k) for k in state_dict)
    for key, value in model.state_dict().items():
        initial_norm = key.startswith("feature_norms.") or (detector and key.startswith("norm."))
        if initial_norm and key not in out:
            out[key] = torch.ones(value.shape) if key.endswith(".weight") else torch.zeros(value.shape)
    check_state_dict_fits(out, model, hint=f" (model embed_dim {model.num_features}, depth {model.num_layers})")
    return out


def _create_plainmamba(variant: str, pretrained: bool = False, **kwargs) -> PlainMamba:
    """`out_indices`: the features_only blocks (default: four evenly spaced, the official segmentation choice)."""
    depth = kwargs.get("depth", 24)
    out_indices = kwargs.pop("out_indices", tuple(range(depth // 4 - 1, depth, depth // 4)) if depth >= 4
                             else tuple(range(depth)))
    return build_model_with_cfg(
        PlainMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs) -> Dict:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.stem.0", "classifier": "head.fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2403.17695", "paper_name": "PlainMamba: Improving Non-Hierarchical Mamba in Visual "
        "Recognition", "origin_url": "https://github.com/ChenhongyiYang/PlainMamba", **kwargs,
    }


# No hosted weights: download the official release (huggingface.co/ChenhongyiYang/PlainMamba l1.pth, l2.pth, l3.pth)
# and pass it, or its conversion by tools/convert_checkpoint.py, with pretrained_cfg_overlay=dict(file=...).
default_cfgs = generate_default_cfgs({
    "plainmamba_l1.in1k": _cfg(),
    "plainmamba_l2.in1k": _cfg(),
    "plainmamba_l3.in1k": _cfg(),
    "test_plainmamba.untrained": _cfg(input_size=(3, 64, 64), pool_size=(4, 4), crop_pct=1.0),
})


@register_model
def plainmamba_l1(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L1: 7.6M params (7.4M without the head), ImageNet-1k top-1 77.9."""
    args = dict(embed_dim=192, depth=24, num_convs_patch_embed=1, dwconv_blocks=(0,), drop_path_rate=0.2)
    return _create_plainmamba("plainmamba_l1", pretrained, **dict(args, **kwargs))


@register_model
def plainmamba_l2(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L2: 26.1M params (25.8M without the head), ImageNet-1k top-1 81.6."""
    args = dict(embed_dim=384, depth=24, num_convs_patch_embed=2, dwconv_blocks=(), drop_path_rate=0.2)
    return _create_plainmamba("plainmamba_l2", pretrained, **dict(args, **kwargs))


@register_model
def plainmamba_l3(pretrained: bool = False, **kwargs) -> PlainMamba:
    """PlainMamba-L3: 51.0M params (50.5M without the head), ImageNet-1k top-1 82.3."""
    args = dict(embed_dim=448, depth=36, num_convs_patch_embed=2, dwconv_blocks=(), drop_path_rate=0.4)
    return _create_plainmamba("plainmamba_l3", pretrained, **dict(args, **kwargs))


@register_model
def test_plainmamba(pretrained: bool = False, **kwargs) -> PlainMamba:
    """A tiny PlainMamba for tests (the official parity fixture's model): 3 blocks of width 32, the first with the
    depthwise conv, one patch-embedding conv; 0.26M params with a 1000-class head."""
    args = dict(embed_dim=32, depth=3, num_convs_patch_embed=1, dwconv_blocks=(0,), drop_path_rate=0.2)
    return _create_plainmamba("test_plainmamba", pretrained, **dict(args, **kwargs))
