"""`depthwise_conv2d`: a depthwise k x k convolution of channels-last maps with a fused residual and activation, a
`torch.library` custom op (the depthwise convolutions of the Mamba blocks: x -> SiLU(DWConv(x)), x + DWConv(x), the
ConvFFN's GELU(x + DWConv(x)), strided ones in downsamplings).

Backends (`backends.OpBackends`; modules with `forward(x, weight, bias, stride, activation, residual) -> out` and
`backward(dout, ...same) -> (dx, dweight, dbias)`): "reference" (`depthwise_conv_ref`: `conv2d` on the channels-last
map seen as NCHW, then the activation; on CUDA this is cuDNN's convolution, the fast path there), "cpu"
(`depthwise_conv_cpu`, C++/OpenMP: one pass that writes each output once; at batch 1 a fraction of oneDNN's fixed
cost per call, which dominates these small maps). Both backwards recompute the pre-activation and share
`depthwise_conv_ref.backward_from_preactivation` (ATen's convolution backward).
"""
from typing import Optional

import torch
from torch import Tensor

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op
from .depthwise_conv_ref import ACTIVATIONS

DEPTHWISE_CONV_BACKENDS = OpBackends("depthwise_conv2d", {"reference": "vision2d.ops.depthwise_conv_ref",
                                                          "cpu": "vision2d.ops.depthwise_conv_cpu"})


@custom_op("vision2d::depthwise_conv2d")
def _conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, activation: str, residual: bool,
             backend: str) -> Tensor:
    return DEPTHWISE_CONV_BACKENDS.forward(backend, x, weight, bias, stride, activation, residual)


@_conv_op.register_fake
def _(x, weight, bias, stride, activation, residual, backend):
    batch, H, W, C = x.shape
    return x.new_empty(batch, (H - 1) // stride + 1, (W - 1) // stride + 1, C)


@torch.library.custom_op("vision2d::depthwise_conv2d_backward", mutates_args=())
def _conv_backward_op(dout: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, activation: str,
                      residual: bool, backend: str) -> list[Tensor]:
    grads = DEPTHWISE_CONV_BACKENDS.backward(backend, dout.contiguous(), x, weight, bias, stride, activation, residual)
    return backward_op_grads(grads, x)


@_conv_backward_op.register_fake
def _(dout, x, weight, bias, stride, activation, residual, backend):
    return backward_op_fake((x, weight, bias), x)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, activation, residual, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.options = (stride, activation, residual, backend)


def _backward(ctx, dout):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = _conv_backward_op(dout, x, weight, bias, *ctx.options)
    return dx, dweight, dbias if bias is not None else None, None, None, None, None


_conv_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(x, weight, bias, stride, activation, residual):
    """Raises a TypeError / ValueError naming the bad argument."""
    check_tensors("depthwise_conv2d", dict(x=x, weight=weight, bias=bias), required=("x", "weight"))
    if x.dim() != 4:
        raise ValueError(f"depthwise_conv2d: x must be 4-D channels-last (batch, H, W, C), got shape {tuple(x.shape)}")
    C, k = x.shape[-1], weight.shape[-1]
    if weight.shape not in ((C, 1, k, k), (C, k, k)) or k % 2 == 0:
        raise ValueError(f"depthwise_conv2d: weight must be (C, 1, k, k) or (C, k, k) with C = {C} (from x "
                         f"{tuple(x.shape)}) and k odd, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"depthwise_conv2d: bias must be ({C},) (C from x {tuple(x.shape)}), got {tuple(bias.shape)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"depthwise_conv2d: stride must be a positive int, got {stride!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"depthwise_conv2d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual and stride != 1:
        raise ValueError(f"depthwise_conv2d: residual=True adds the input, so it needs stride 1, got {stride}")


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
                     activation: str = "none", residual: bool = False, backend: Optional[str] = None) -> Tensor:
    """act(DWConv(x) + bias (+ x if residual)) of a channels-last map; see `depthwise_conv_ref` for the math.

    x: (batch, H, W, C), any float dtype; weight: (C, 1, k, k) or (C, k, k), k odd (zero padding k // 2); bias: (C)
    or None; activation: "none", "relu", "silu" or "gelu" (exact). Returns (batch, (H - 1) // stride + 1,
    (W - 1) // stride + 1, C) contiguous in x's dtype. Any strides are accepted.
    """
    _check_inputs(x, weight, bias, stride, activation, residual)
    backend = DEPTHWISE_CONV_BACKENDS.check_name(backend)
    return call_op(_conv_op, x.contiguous(), weight, bias, stride, activation, bool(residual), backend)
