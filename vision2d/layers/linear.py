"""Linear layers whose CPU inference runs oneDNN's matrix product (`linear`, `Linear`, `Mlp`)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import Mlp as TimmMlp
from timm.models import register_notrace_module

from ..ops.backends import unobserved

# oneDNN's linear with fused post-ops, the op Inductor's CPU freezing pass uses (PyTorch builds with MKLDNN), on CPUs
# with AVX-512, where it measured faster than ATen's MKL product in these models; with AVX2 alone (Zen 3) it measured
# slower or no faster (docs/benchmarks.md)
_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
           and torch.backends.cpu.get_cpu_capability() == "AVX512")


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> bool:
    """True where `linear` runs oneDNN's product: CPU float32 inference (grad mode off, nothing compiled, traced or
    otherwise observing the call: `backends.unobserved`) with a contiguous weight, on a CPU with AVX-512."""
    return (_ONEDNN and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and weight.is_contiguous() and unobserved(x, weight, bias))


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], post_op: str) -> torch.Tensor:
    """oneDNN's x @ weight.T + bias with `post_op` ("none" or "gelu", exact) fused; for calls `onednn_applies` to."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], "none" if post_op == "gelu" else "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., in), weight (out, in) -> (..., out). oneDNN's product where
    `onednn_applies`, else ATen's (MKL). Same result to float rounding; with AVX-512, oneDNN's is the faster on these
    models' shapes at batch 1 (docs/benchmarks.md)."""
    if onednn_applies(x, weight, bias):
        return _onednn_linear(x, weight, bias, "none")
    return F.linear(x, weight, bias)


@register_notrace_module  # torch.fx: one node, so that the product is chosen when run, not when traced
class Linear(nn.Linear):
    """nn.Linear (same parameters, keys and initialisation) whose product is `linear`'s: oneDNN's in CPU float32
    inference; (..., in_features) -> (..., out_features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


@register_notrace_module  # torch.fx: one node (the fused path is chosen when run)
class Mlp(TimmMlp):
    """timm's Mlp on tokens (B, ..., C) (same arguments, modules, keys and initialisation) whose fc1 and fc2 are
    `Linear`s; with an exact GELU (nn.GELU or a subclass) and no hidden norm, fc1 and the GELU are one oneDNN call
    where `onednn_applies`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not (type(self.fc1) is type(self.fc2) is nn.Linear):
            raise ValueError("vision2d.layers.Mlp: use_conv=True is not supported (its products are linears)")
        for fc in (self.fc1, self.fc2):
            fc.__class__ = Linear  # a subclass without state of its own: the same parameters, `linear`'s product
        self.fuses_gelu = (isinstance(self.act, nn.GELU) and self.act.approximate == "none"
                           and isinstance(self.norm, nn.Identity))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1 = self.fc1
        if self.fuses_gelu and onednn_applies(x, fc1.weight, fc1.bias):
            x = _onednn_linear(x, fc1.weight, fc1.bias, "gelu")
        else:
            x = self.act(fc1(x))
        return self.drop2(self.fc2(self.norm(self.drop1(x))))
