"""A depthwise convolution layer on channels-last maps with its residual and activation fused
(`vision2d.ops.depthwise_conv2d`)."""
import torch
from torch import nn

from timm.models import register_notrace_module

from ..ops import depthwise_conv2d
from ..ops.depthwise_conv_ref import ACTIVATIONS


@register_notrace_module  # torch.fx: one node (the op validates its input's shape)
class DepthwiseConv2d(nn.Conv2d):
    """act(DWConv(x) + bias (+ x if residual)) with zero padding kernel_size // 2; (B, H, W, C) ->
    (B, (H - 1) // stride + 1, (W - 1) // stride + 1, C) contiguous. Parameters, state-dict keys and initialisation
    are those of nn.Conv2d(channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=bias), so
    checkpoints of the plain conv load unchanged; activation is one of "none", "relu", "silu", "gelu" (exact)."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, bias: bool = True, activation: str = "none",
                 residual: bool = False, device=None, dtype=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"DepthwiseConv2d: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if kernel_size % 2 == 0 or (residual and stride != 1):
            raise ValueError(f"DepthwiseConv2d: needs an odd kernel_size and stride 1 with residual=True, got "
                             f"kernel_size={kernel_size}, stride={stride}, residual={residual}")
        super().__init__(channels, channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=channels,
                         bias=bias, device=device, dtype=dtype)
        self.activation, self.residual = activation, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.stride[0], self.activation, self.residual)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}, residual={self.residual}"
