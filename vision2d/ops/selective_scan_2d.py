"""`selective_scan_2d`: the one entry point of the Mamba2D 2D selective scan, a `torch.library` custom op.

Backends (`backends.OpBackends`; modules with `forward(...) -> y` and `backward(dy, ...) -> 9 grads`, same arguments
as the reference): "reference" (`scan2d_ref`, pure PyTorch, any device), "cpu" (`scan2d_cpu`, compiled C++/OpenMP),
"triton" (`scan2d_triton`, CUDA; CPU tensors under TRITON_INTERPRET=1). The backend is resolved inside the op, so
compiled graphs keep the name (default "auto") as a constant.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op

SCAN2D_BACKENDS = OpBackends("selective_scan_2d", {"reference": "vision2d.ops.scan2d_ref",
                                                   "cpu": "vision2d.ops.scan2d_cpu",
                                                   "triton": "vision2d.ops.scan2d_triton"})
BACKENDS = SCAN2D_BACKENDS.names


def backend_unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None when backend `name` of the 2D scan can run on `device`, else why not."""
    return SCAN2D_BACKENDS.unavailable_reason(name, device)


def resolve_backend(device, backend: Optional[str] = None) -> str:
    """The backend that runs a 2D scan on `device` (see `backends.OpBackends.resolve`)."""
    return SCAN2D_BACKENDS.resolve(device, backend)


@custom_op("vision2d::selective_scan_2d")
def _scan_op(u: Tensor, delta_t: Tensor, delta_l: Tensor, A_t: Tensor, A_l: Tensor, B_t: Tensor, B_l: Tensor,
             C: Tensor, D: Optional[Tensor], delta_softplus: bool, reverse: bool, backend: str) -> Tensor:
    return SCAN2D_BACKENDS.forward(backend, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse)


@_scan_op.register_fake
def _(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse, backend):
    return torch.empty_like(u)


@torch.library.custom_op("vision2d::selective_scan_2d_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, u: Tensor, delta_t: Tensor, delta_l: Tensor, A_t: Tensor, A_l: Tensor,
                      B_t: Tensor, B_l: Tensor, C: Tensor, D: Optional[Tensor], delta_softplus: bool, reverse: bool,
                      backend: str) -> list[Tensor]:
    grads = SCAN2D_BACKENDS.backward(backend, dy.contiguous(), u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D,
                                     delta_softplus, reverse)
    return backward_op_grads(grads, u)


@_scan_backward_op.register_fake
def _(dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse, backend):
    return backward_op_fake((u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D), u)


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, reverse, backend = inputs
    ctx.save_for_backward(*tensors[:8])
    ctx.has_d = tensors[8] is not None
    if ctx.has_d:
        ctx.d = tensors[8]
    ctx.options = (delta_softplus, reverse, backend)


def _backward(ctx, dy):
    saved = ctx.saved_tensors
    D = ctx.d if ctx.has_d else None
    grads = _scan_backward_op(dy, *saved, D, *ctx.options)
    return (*grads[:8], grads[8] if ctx.has_d else None, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D):
    tensors = dict(u=u, delta_t=delta_t, delta_l=delta_l, A_t=A_t, A_l=A_l, B_t=B_t, B_l=B_l, C=C, D=D)
    check_tensors("selective_scan_2d", tensors, required=[name for name in tensors if name != "D"])
    if u.dim() != 4:
        raise ValueError(f"selective_scan_2d: u must be 4-D (B, H, W, E) channels-last, got shape {tuple(u.shape)}")
    Bsz, H, W, E = u.shape
    if A_t.dim() != 2 or A_t.shape[0] != E:
        if A_t.dim() == 2 and A_t.shape[0] == H:  # looked at only when failing: no guard on H in compiled graphs
            raise ValueError(f"selective_scan_2d: u {tuple(u.shape)} looks channels-first (B, E, H, W); u and the "
                             f"other per-pixel inputs must be channels-last (B, H, W, E), e.g. u.permute(0, 2, 3, 1)")
        raise ValueError(f"selective_scan_2d: A_t must be (E, N) = ({E}, N), got {tuple(A_t.shape)}")
    N = A_t.shape[1]
    expected = dict(delta_t=(Bsz, H, W, E), delta_l=(Bsz, H, W, E), A_t=(E, N), A_l=(E, N), B_t=(Bsz, H, W, N),
                    B_l=(Bsz, H, W, N), C=(Bsz, H, W, N), D=(E,))
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"selective_scan_2d: {name} must have shape {shape} (from u {tuple(u.shape)} and "
                             f"A_t {tuple(A_t.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta_t", "delta_l", "B_t", "B_l", "C"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"selective_scan_2d: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")


def _refuse_forward_mode_ad(*tensors):
    """The custom op has no forward-mode derivative: raise instead of returning zero tangents."""
    if forward_ad._current_level >= 0 and any(
            t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError("selective_scan_2d has no forward-mode AD (torch.func.jvp, torch.autograd.forward_ad);"
                                  " use reverse mode, or forward mode through vision2d.ops.selective_scan_2d_ref")


def selective_scan_2d(u: Tensor, delta_t: Tensor, delta_l: Tensor, A_t: Tensor, A_l: Tensor, B_t: Tensor,
                      B_l: Tensor, C: Tensor, D: Optional[Tensor] = None, delta_softplus: bool = True,
                      reverse: bool = False, backend: Optional[str] = None) -> Tensor:
    """Mamba2D 2D selective scan on channels-last inputs; see `scan2d_ref` for the math.

    u, delta_t, delta_l: (B, H, W, E); A_t, A_l: (E, N); B_t, B_l, C: (B, H, W, N); D: (E,) or None.
    Per-pixel inputs share one dtype (fp32, bf16, fp16 or fp64); A and D may be any float dtype. The state is fp32
    (fp64 for fp64 inputs). Returns y (B, H, W, E) in u's dtype. Any strides are accepted.
    """
    _check_inputs(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D)
    _refuse_forward_mode_ad(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D)
    name = SCAN2D_BACKENDS.check_name(backend)  # resolved inside the op (untraced): compile sees a constant
    args = [t.contiguous() for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    return call_op(_scan_op, *args, None if D is None else D.contiguous(), bool(delta_softplus), bool(reverse), name)
