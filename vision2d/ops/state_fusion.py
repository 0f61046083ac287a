"""`state_fusion`: depthwise k x k cross-correlation over border-replicated channels-last maps, a `torch.library`
custom op. Spatial-Mamba's structure-aware state fusion applies it to the scan's states with its three dilated 3x3
kernels merged into one 11x11 kernel (`merge_dilated_kernels`).

Backends (`backends.OpBackends`; modules with `forward(x, weight) -> out` and `backward(dout, x, weight) ->
(dx, dweight)`): "reference" (`state_fusion_ref`: `conv2d` over `pad(mode="replicate")`), "cpu" (`state_fusion_cpu`,
C++/OpenMP, skips the taps that are zero in every channel), "triton" (`state_fusion_triton`). No padded copy of the
input is made.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op

STATE_FUSION_BACKENDS = OpBackends("state_fusion", {"reference": "vision2d.ops.state_fusion_ref",
                                                    "cpu": "vision2d.ops.state_fusion_cpu",
                                                    "triton": "vision2d.ops.state_fusion_triton"})


@custom_op("vision2d::state_fusion")
def _state_fusion_op(x: Tensor, weight: Tensor, backend: str) -> Tensor:
    return STATE_FUSION_BACKENDS.forward(backend, x, weight)


@_state_fusion_op.register_fake
def _(x, weight, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vision2d::state_fusion_backward", mutates_args=())
def _state_fusion_backward_op(dout: Tensor, x: Tensor, weight: Tensor, backend: str) -> list[Tensor]:
    # weight may be a view: its gradient is returned contiguous
    return backward_op_grads(STATE_FUSION_BACKENDS.backward(backend, dout.contiguous(), x, weight), x)


@_state_fusion_backward_op.register_fake
def _(dout, x, weight, backend):
    return backward_op_fake((x, weight), x)


def _setup_context(ctx, inputs, output):
    x, weight, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.backend = backend


def _backward(ctx, dout):
    x, weight = ctx.saved_tensors
    dx, dweight = _state_fusion_backward_op(dout, x, weight, ctx.backend)
    return dx, dweight, None


_state_fusion_op.register_autograd(_backward, setup_context=_setup_context)


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def state_fusion(x: Tensor, weight: Tensor, backend: Optional[str] = None) -> Tensor:
    """out[b, i, j, c] = sum_{a, d} weight[c, a, d] x[b, clamp(i + a - k // 2), clamp(j + d - k // 2), c].

    x: (batch, H, W, C), any float dtype; weight: (C, k, k) with k odd, any float dtype. Accumulates in float32
    (float64 for float64 x); returns (batch, H, W, C) in x's dtype. Any strides are accepted.
    """
    check_tensors("state_fusion", dict(x=x, weight=weight), required=("x", "weight"))
    if x.dim() != 4:
        raise ValueError(f"state_fusion: x must be 4-D channels-last (batch, H, W, C), got shape {tuple(x.shape)}")
    C = x.shape[-1]
    if weight.dim() != 3 or weight.shape[0] != C or weight.shape[1] != weight.shape[2] or weight.shape[1] % 2 == 0:
        raise ValueError(f"state_fusion: weight must be (C, k, k) with C = {C} (from x {tuple(x.shape)}) and k odd, "
                         f"got {tuple(weight.shape)}")
    backend = STATE_FUSION_BACKENDS.check_name(backend)
    return call_op(_state_fusion_op, x.contiguous(), weight, backend)  # the backends take any weight layout


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def merge_dilated_kernels(kernels: List[Tensor], dilations: List[int]) -> Tensor:
    """One (C, k, k) kernel equal to the sum of depthwise 3x3 kernels ((C, 1, 3, 3) or (C, 3, 3)) at the given
    dilations, k = 2 max(dilations) + 1: kernel i's tap (a, d) lands at (m + (a - 1) dil_i, m + (d - 1) dil_i), m = k // 2
    (the centre taps add up). Differentiable in the kernels; built from them on every call. Stored tap by tap (the
    (C, k, k) view of a contiguous (k * k, C) tensor), the layout the CPU and Triton kernels read, so they take it
    without a copy."""
    if len(kernels) != len(dilations) or not kernels:
        raise ValueError(f"merge_dilated_kernels: {len(kernels)} kernels for dilations {tuple(dilations)}")
    channels, centre = kernels[0].shape[0], max(dilations)
    k = 2 * centre + 1
    merged = kernels[0].new_zeros(k * k, channels)
    for kernel, dilation in zip(kernels, dilations):
        taps = [(centre + (a - 1) * dilation) * k + centre + (d - 1) * dilation for a in range(3) for d in range(3)]
        merged.index_add_(0, torch.tensor(taps, device=merged.device), kernel.reshape(channels, 9).t())
    return merged.t().view(channels, k, k)
