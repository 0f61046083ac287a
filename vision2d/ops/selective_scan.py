"""`selective_scan`: the 1D selective scan (Mamba's S6) with K scan directions, a `torch.library` custom op.

Backends (`backends.OpBackends`; modules with `forward(...) -> y` and `backward(dy, ...) -> 8 grads`, the arguments of
`selective_scan_ref.forward` with the order always given): "reference" (`selective_scan_ref`, pure PyTorch, any
device), "cpu" (`selective_scan_cpu`, compiled C++/OpenMP), "triton" (`selective_scan_triton`, CUDA; CPU tensors under
TRITON_INTERPRET=1). The backend is resolved inside the op, so compiled graphs
keep the name (default "auto") as a constant.
"""
from typing import Optional

import torch
from torch import Tensor

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op
from .scan_orders import stored_per_device
from .selective_scan_ref import identity_orders, periodic_inputs

SELECTIVE_SCAN_BACKENDS = OpBackends("selective_scan", {"reference": "vision2d.ops.selective_scan_ref",
                                                        "cpu": "vision2d.ops.selective_scan_cpu",
                                                        "triton": "vision2d.ops.selective_scan_triton"})


@custom_op("vision2d::selective_scan")
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], order: Tensor, delta_softplus: bool, merge: bool, backend: str,
             delta_proj_weight: Optional[Tensor] = None) -> Tensor:
    return SELECTIVE_SCAN_BACKENDS.forward(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge,
                                           delta_proj_weight)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend, delta_proj_weight=None):
    batch, T, K, E = u.shape[0], order.shape[1], A.shape[0], u.shape[2]
    return u.new_empty((batch, T, E) if merge else (batch, T, K, E))


@torch.library.custom_op("vision2d::selective_scan_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      delta_bias: Optional[Tensor], order: Tensor, delta_softplus: bool, merge: bool,
                      backend: str, delta_proj_weight: Optional[Tensor] = None) -> list[Tensor]:
    # periodic inputs: the backends' backward runs on them written out, and their gradients sum over the copies
    L, T = u.shape[1], order.shape[1]
    repeated_u, repeated_delta, repeated_B, repeated_C = periodic_inputs(T, u, delta, B, C)
    grads = list(SELECTIVE_SCAN_BACKENDS.backward(backend, dy.contiguous(), repeated_u, repeated_delta, A, repeated_B,
                                                  repeated_C, D, delta_bias, delta_softplus, order, merge,
                                                  delta_proj_weight))
    if T != L:
        for i in (0, 1, 3, 4):  # du, ddelta, dB, dC
            grads[i] = grads[i].view(grads[i].shape[0], T // L, L, *grads[i].shape[2:]).sum(1)
    return backward_op_grads(grads, u)  # the low-rank delta gradient of an einsum is not contiguous


@_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend, delta_proj_weight=None):
    return backward_op_fake((u, delta, A, B, C, D, delta_bias, delta_proj_weight), u)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend, delta_proj_weight = inputs
    ctx.save_for_backward(u, delta, A, B, C, order)
    ctx.optional = (D, delta_bias, delta_proj_weight)  # parameters: kept by reference, not versioned
    ctx.options = (delta_softplus, merge, backend)


def _backward(ctx, dy):
    u, delta, A, B, C, order = ctx.saved_tensors
    optional = ctx.optional
    grads = _scan_backward_op(dy, u, delta, A, B, C, *optional[:2], order, *ctx.options, optional[2])
    D_grad, bias_grad, weight_grad = (g if t is not None else None for g, t in zip(grads[5:], optional))
    return (*grads[:5], D_grad, bias_grad, None, None, None, None, weight_grad)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


@stored_per_device
def _identity_orders(K: int, L: int, device: torch.device) -> Tensor:
    """`identity_orders`, contiguous as the op passes it on; kept per size and device."""
    return identity_orders(K, L, device).contiguous()


def _check_inputs(u, delta, A, B, C, D, delta_bias, order, delta_proj_weight):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, order=order,
                   delta_proj_weight=delta_proj_weight)
    check_tensors("selective_scan", tensors, any_dtype=("order",))
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be 3-D (batch, L, E), got shape {tuple(u.shape)}")
    if A.dim() != 3 or A.shape[1] != u.shape[2]:
        raise ValueError(f"selective_scan: A must be (K, E, N) with E = {u.shape[2]} (from u {tuple(u.shape)}), "
                         f"got {tuple(A.shape)}")
    (batch, L, E), (K, _, N) = u.shape, A.shape
    if delta_proj_weight is not None and (delta_proj_weight.dim() != 3 or delta_proj_weight.shape[:2] != (K, E)):
        raise ValueError(f"selective_scan: delta_proj_weight must be (K, E, R) = ({K}, {E}, R) (K from A "
                         f"{tuple(A.shape)}, E from u {tuple(u.shape)}), got {tuple(delta_proj_weight.shape)}")
    rank = None if delta_proj_weight is None else delta_proj_weight.shape[2]
    expected = dict(delta=(batch, L, K, E if rank is None else rank), B=(batch, L, K, N), C=(batch, L, K, N),
                    D=(K, E), delta_bias=(K, E))
    whole_copies = order is not None and order.dim() == 2 and (
        order.shape[1] == L if L == 0 else order.shape[1] >= L and order.shape[1] % L == 0)
    if order is not None and not (whole_copies and order.shape[0] == K):
        raise ValueError(f"selective_scan: order must be (K, L) = ({K}, {L}), or (K, s L) for s copies of the inputs "
                         f"(K from A {tuple(A.shape)}, L from u {tuple(u.shape)}), got {tuple(order.shape)}")
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            rank_from = f"; R from delta_proj_weight {tuple(delta_proj_weight.shape)}" \
                if name == "delta" and rank is not None else ""
            raise ValueError(f"selective_scan: {name} must have shape {shape} (batch, L, E from u {tuple(u.shape)}; "
                             f"K, N from A {tuple(A.shape)}{rank_from}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B", "C"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"selective_scan: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")
    if order is not None and order.dtype != torch.int64:  # its values are checked by the backends
        raise TypeError(f"selective_scan: order must be int64, got {order.dtype}")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, delta_softplus: bool = False, order: Optional[Tensor] = None,
                   merge: bool = True, backend: Optional[str] = None,
                   delta_proj_weight: Optional[Tensor] = None) -> Tensor:
    """Selective scan of K directions over channels-last sequences; see `selective_scan_ref` for the math.

    u: (batch, L, E); delta: (batch, L, K, E); A: (K, E, N); B, C: (batch, L, K, N); D, delta_bias: (K, E) or None;
    order: int64 (K, L) or None (identity), row k a permutation of 0..L-1 (step t of direction k visits position
    order[k, t]; see `scan_orders`), or (K, s L), a permutation of 0..s L - 1: a sequence of s copies of the
    per-pixel inputs (position p reads u, delta, B, C at p mod L) without storing them, y then (batch, s L, ...).
    delta_proj_weight: (K, E, R) or None; when given, delta is the low-rank
    (batch, L, K, R) input of each direction's delta projection (Mamba's dt_proj, no bias: delta_bias adds after it),
    which the cpu kernel computes as it scans (the projected delta is never stored). Per-pixel inputs share one dtype
    (fp32, bf16, fp16 or fp64); A, D, delta_bias and delta_proj_weight may be any float dtype. Returns y in u's
    dtype: (batch, L, E) summed over directions if `merge`, else (batch, L, K, E). Any strides are accepted.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, order, delta_proj_weight)
    backend = SELECTIVE_SCAN_BACKENDS.check_name(backend)
    if order is None:
        order = _identity_orders(A.shape[0], u.shape[1], u.device)
    args = [t.contiguous() for t in (u, delta, A, B, C)]
    optional = [None if t is None else t.contiguous() for t in (D, delta_bias)]
    weight = None if delta_proj_weight is None else delta_proj_weight.contiguous()
    return call_op(_scan_op, *args, *optional, order.contiguous(), bool(delta_softplus), bool(merge), backend, weight)
