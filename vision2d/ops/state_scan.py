"""`state_scan`: the 1D selective scan (one direction, storage order) returning every hidden state, a
`torch.library` custom op. Spatial-Mamba fuses these states in 2D (`state_fusion`) before the C read-out.

Backends (`backends.OpBackends`; modules with `forward(u, delta, A, B, delta_bias, delta_softplus) -> h` and
`backward(dh, u, delta, A, B, delta_bias, delta_softplus, h) -> 5 grads`): "reference" (`state_scan_ref`, pure
PyTorch, any device), "cpu" (`state_scan_cpu`, compiled C++/OpenMP), "triton" (`state_scan_triton`). The backward
reads the forward's output h instead of recomputing it; a following `state_fusion` saves the same tensor, so the
states are held once.
"""
from typing import Optional

import torch
from torch import Tensor

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op
from .scan2d_ref import state_dtype

STATE_SCAN_BACKENDS = OpBackends("state_scan", {"reference": "vision2d.ops.state_scan_ref",
                                                "cpu": "vision2d.ops.state_scan_cpu",
                                                "triton": "vision2d.ops.state_scan_triton"})


@custom_op("vision2d::state_scan")
def _state_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor],
                   delta_softplus: bool, backend: str) -> Tensor:
    return STATE_SCAN_BACKENDS.forward(backend, u, delta, A, B, delta_bias, delta_softplus)


@_state_scan_op.register_fake
def _(u, delta, A, B, delta_bias, delta_softplus, backend):
    (batch, L, E), N = u.shape, A.shape[1]
    return u.new_empty((batch, L, N, E), dtype=state_dtype(u.dtype))


@torch.library.custom_op("vision2d::state_scan_backward", mutates_args=())
def _state_scan_backward_op(dh: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor],
                            h: Tensor, delta_softplus: bool, backend: str) -> list[Tensor]:
    grads = STATE_SCAN_BACKENDS.backward(backend, dh.contiguous(), u, delta, A, B, delta_bias, delta_softplus, h)
    return backward_op_grads(grads, u)


@_state_scan_backward_op.register_fake
def _(dh, u, delta, A, B, delta_bias, h, delta_softplus, backend):
    return backward_op_fake((u, delta, A, B, delta_bias), u)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, delta_bias, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, delta_bias, output)
    ctx.options = (delta_softplus, backend)


def _backward(ctx, dh):
    u, delta, A, B, delta_bias, h = ctx.saved_tensors
    grads = _state_scan_backward_op(dh, u, delta, A, B, delta_bias, h, *ctx.options)
    return (*grads[:4], grads[4] if delta_bias is not None else None, None, None)


_state_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta, A, B, delta_bias):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, delta_bias=delta_bias)
    check_tensors("state_scan", tensors)
    if u.dim() != 3:
        raise ValueError(f"state_scan: u must be 3-D (batch, L, E), got shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[2]:
        raise ValueError(f"state_scan: A must be (E, N) with E = {u.shape[2]} (from u {tuple(u.shape)}), "
                         f"got {tuple(A.shape)}")
    (batch, L, E), N = u.shape, A.shape[1]
    for name, shape in dict(delta=(batch, L, E), B=(batch, L, N), delta_bias=(E,)).items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"state_scan: {name} must have shape {shape} (batch, L, E from u {tuple(u.shape)}; N "
                             f"from A {tuple(A.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"state_scan: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; per-step "
                            f"inputs must share one dtype")


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def state_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor] = None,
               delta_softplus: bool = False, backend: Optional[str] = None) -> Tensor:
    """Every hidden state of the selective scan over channels-last sequences; see `state_scan_ref` for the math.

    u, delta: (batch, L, E); A: (E, N); B: (batch, L, N); delta_bias: (E) or None. u, delta and B share one dtype
    (fp32, bf16, fp16 or fp64); A and delta_bias may be any float dtype. Returns h (batch, L, N, E) in float32
    (float64 for float64 inputs). Any strides are accepted.
    """
    _check_inputs(u, delta, A, B, delta_bias)
    backend = STATE_SCAN_BACKENDS.check_name(backend)
    args = [t.contiguous() for t in (u, delta, A, B)]
    return call_op(_state_scan_op, *args, None if delta_bias is None else delta_bias.contiguous(),
                   bool(delta_softplus), backend)
