"""Pure-PyTorch reference of `depthwise_conv2d`: a depthwise k x k convolution of channels-last maps with zero padding
k // 2, an optional residual (the input added, stride 1) and a fused activation.

Shapes (channels-last): x (batch, H, W, C); weight (C, 1, k, k) (nn.Conv2d's depthwise weight) or (C, k, k), k odd;
bias (C) or None; stride s; output (batch, Ho, Wo, C) with Ho = (H - 1) // s + 1, Wo = (W - 1) // s + 1:
    z[b, i, j, c] = bias[c] + sum_{a, d < k} weight[c, a, d] x[b, s i + a - k // 2, s j + d - k // 2, c]
                    (+ x[b, i, j, c] if residual),    out = act(z),
act one of "none", "relu", "silu", "gelu" (exact, erf). Computed in the state dtype (float32, or float64 for float64
inputs); the output has x's dtype. On CUDA this is the fast path too (cuDNN's depthwise convolution).

`backward_from_preactivation` is the backward of every backend: the activation's derivative at z (which each backend
recomputes with its own forward) and ATen's convolution backward.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan2d_ref import state_dtype

ACTIVATIONS = ("none", "relu", "silu", "gelu")


def _conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, residual: bool) -> Tensor:
    """z in the state dtype, (batch, Ho, Wo, C) (a channels-last NCHW tensor seen through a permute)."""
    sd, C, k = state_dtype(x.dtype), x.shape[-1], weight.shape[-1]
    image = x.to(sd).permute(0, 3, 1, 2)
    z = F.conv2d(image, weight.to(sd).reshape(C, 1, k, k), None if bias is None else bias.to(sd), stride=stride,
                 padding=k // 2, groups=C)
    if residual:
        z = z + image
    return z.permute(0, 2, 3, 1)


def activate(z: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "silu":
        return F.silu(z)
    if activation == "gelu":
        return F.gelu(z)
    return z


def depthwise_conv_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, activation: str,
                       residual: bool) -> Tensor:
    """(batch, H, W, C) -> (batch, Ho, Wo, C) contiguous, in x's dtype; differentiable by autograd."""
    return activate(_conv(x, weight, bias, stride, residual), activation).to(x.dtype).contiguous()


def activation_slope(z: Tensor, activation: str) -> Optional[Tensor]:
    """d act / dz at z (None for "none")."""
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "silu":
        s = torch.sigmoid(z)
        return s * (1 + z * (1 - s))
    if activation == "gelu":  # Phi(z) + z phi(z)
        return 0.5 * (1 + torch.erf(z * 0.5 ** 0.5)) + z * torch.exp(-0.5 * z * z) * (2 * torch.pi) ** -0.5
    return None


def backward_from_preactivation(dout: Tensor, z: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                                stride: int, activation: str, residual: bool):
    """(dx, dweight, dbias) in x's, weight's and bias's dtypes (dbias None without bias); z: the pre-activation
    (batch, Ho, Wo, C) in the state dtype."""
    sd, C, k = state_dtype(x.dtype), x.shape[-1], weight.shape[-1]
    dz = dout.to(sd)
    slope = activation_slope(z.to(sd), activation)
    if slope is not None:
        dz = dz * slope
    dz_image = dz.permute(0, 3, 1, 2)
    dx, dweight, dbias = torch.ops.aten.convolution_backward(
        dz_image, x.to(sd).permute(0, 3, 1, 2), weight.to(sd).reshape(C, 1, k, k), None if bias is None else [C],
        [stride, stride], [k // 2, k // 2], [1, 1], False, [0, 0], C, [True, True, bias is not None])
    dx = dx.permute(0, 2, 3, 1)
    if residual:
        dx = dx + dz
    return (dx.to(x.dtype), dweight.reshape(weight.shape).to(weight.dtype),
            None if bias is None else dbias.to(bias.dtype))


def backward(dout, x, weight, bias, stride, activation, residual):
    """The reference backend's backward: z recomputed by the reference convolution."""
    z = _conv(x, weight, bias, stride, residual)
    return backward_from_preactivation(dout, z, x, weight, bias, stride, activation, residual)


# the backend interface of `depthwise_conv2d`
forward = depthwise_conv_ref


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
