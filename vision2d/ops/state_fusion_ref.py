"""Pure-PyTorch reference of `state_fusion`: a depthwise 2D cross-correlation over border-replicated input, the
structure-aware state fusion of Spatial-Mamba (its three dilated 3x3 kernels merged into one k x k kernel).

Shapes (channels-last): x (batch, H, W, C); weight (C, k, k), k odd. With p = k // 2 and clamp to the image:
    out[b, i, j, c] = sum_{a, d < k} weight[c, a, d] * x[b, clamp(i + a - p, 0, H - 1), clamp(j + d - p, 0, W - 1), c]
(exactly `conv2d(pad_replicate(x, p), weight, groups=C)`). Computed in the state dtype (float32, or float64 for
float64 inputs); the output has x's dtype.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .scan2d_ref import state_dtype


def state_fusion_ref(x: Tensor, weight: Tensor) -> Tensor:
    """(batch, H, W, C), (C, k, k) -> (batch, H, W, C); differentiable by autograd."""
    sd, p = state_dtype(x.dtype), weight.shape[-1] // 2
    image = F.pad(x.to(sd).permute(0, 3, 1, 2), (p, p, p, p), mode="replicate")
    out = F.conv2d(image, weight.to(sd)[:, None], groups=x.shape[-1])
    return out.permute(0, 2, 3, 1).to(x.dtype)


def state_fusion_ref_backward(dout: Tensor, x: Tensor, weight: Tensor):
    """(dx, dweight) of `state_fusion_ref` written out, in x's and weight's dtypes: per tap (a, d), dweight[:, a, d]
    sums dout times the padded input's window at (a, d), and the window's gradient weight[:, a, d] dout is added to
    the padded gradient, whose border bands fold back onto the edge rows and columns they replicate."""
    sd, (batch, H, W, C), k = state_dtype(x.dtype), x.shape, weight.shape[-1]
    p = k // 2
    image = F.pad(x.to(sd).permute(0, 3, 1, 2), (p, p, p, p), mode="replicate").permute(0, 2, 3, 1)
    g, w = dout.to(sd), weight.to(sd)
    dweight = torch.empty(C, k, k, dtype=sd, device=x.device)
    d_image = torch.zeros_like(image)
    for a in range(k):
        for d in range(k):
            dweight[:, a, d] = (g * image[:, a:a + H, d:d + W]).sum((0, 1, 2))
            d_image[:, a:a + H, d:d + W] += w[:, a, d] * g
    rows = d_image[:, p:p + H].clone()
    rows[:, 0] += d_image[:, :p].sum(1)
    rows[:, -1] += d_image[:, p + H:].sum(1)
    dx = rows[:, :, p:p + W].clone()
    dx[:, :, 0] += rows[:, :, :p].sum(2)
    dx[:, :, -1] += rows[:, :, p + W:].sum(2)
    return dx.to(x.dtype), dweight.to(weight.dtype)


def state_fusion_naive(x: Tensor, weight: Tensor) -> Tensor:
    """Loop over taps with explicit clamped indices (tests only check the reference against it)."""
    batch, H, W, C = x.shape
    k, p = weight.shape[-1], weight.shape[-1] // 2
    out = torch.zeros(x.shape, dtype=torch.float64)
    rows, cols = torch.arange(H), torch.arange(W)
    for a in range(k):
        for d in range(k):
            shifted = x.double()[:, (rows + a - p).clamp(0, H - 1)][:, :, (cols + d - p).clamp(0, W - 1)]
            out += weight[:, a, d].double() * shifted
    return out


# the backend interface of `state_fusion`
forward = state_fusion_ref
backward = state_fusion_ref_backward


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
