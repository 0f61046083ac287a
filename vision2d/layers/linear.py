"""Linear layers whose CPU inference runs oneDNN's matrix product (`linear`, `Linear`)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from timm.models import register_notrace_module

from ..ops.backends import unobserved

# oneDNN's linear, the op Inductor's CPU freezing pass uses (PyTorch builds with MKLDNN)
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., in), weight (out, in) -> (..., out). In CPU float32 inference (grad mode off,
    nothing compiled, traced or otherwise observing the call: `backends.unobserved`; a contiguous weight) the product
    is oneDNN's, else ATen's (MKL). Same result to float rounding; oneDNN's is the faster on these models' shapes at
    batch 1 (docs/benchmarks.md)."""
    if (_ONEDNN and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32) and weight.is_contiguous()
            and unobserved(x, weight, bias)):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


@register_notrace_module  # torch.fx: one node, so that the product is chosen when run, not when traced
class Linear(nn.Linear):
    """nn.Linear (same parameters, keys and initialisation) whose product is `linear`'s: oneDNN's in CPU float32
    inference; (..., in_features) -> (..., out_features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
