"""`selective_scan`: the 1D selective scan (Mamba's S6) with K scan directions, a `torch.library` custom op.

Backends (`backends.OpBackends`; modules with `forward(...) -> y` and `backward(dy, ...) -> 7 grads`, the arguments of
`selective_scan_ref.forward` with the order always given): "reference" (`selective_scan_ref`, pure PyTorch, any
device), "cpu" (`selective_scan_cpu`, compiled C++/OpenMP), "triton" (`selective_scan_triton`, CUDA; CPU tensors under
TRITON_INTERPRET=1). The backend is resolved inside the op, so compiled graphs
keep the name (default "auto") as a constant.
"""
from typing import Optional

import torch
from torch import Tensor

from .backends import OpBackends
from .selective_scan_ref import identity_orders

SELECTIVE_SCAN_BACKENDS = OpBackends("selective_scan", {"reference": "vision2d.ops.selective_scan_ref",
                                                        "cpu": "vision2d.ops.selective_scan_cpu",
                                                        "triton": "vision2d.ops.selective_scan_triton"})
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.custom_op("vision2d::selective_scan", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], order: Tensor, delta_softplus: bool, merge: bool, backend: str) -> Tensor:
    return SELECTIVE_SCAN_BACKENDS.forward(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend):
    return u.new_empty(u.shape if merge else delta.shape)


@torch.library.custom_op("vision2d::selective_scan_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      delta_bias: Optional[Tensor], order: Tensor, delta_softplus: bool, merge: bool,
                      backend: str) -> list[Tensor]:
    grads = SELECTIVE_SCAN_BACKENDS.backward(backend, dy.contiguous(), u, delta, A, B, C, D, delta_bias,
                                             delta_softplus, order, merge)
    # a custom op cannot return None: an absent D / delta_bias gets an empty placeholder that autograd drops
    return [g if g is not None else u.new_empty(0) for g in grads]


@_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, delta_bias)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, order, delta_softplus, merge, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, order)
    ctx.optional = (D, delta_bias)  # parameters: kept by reference, not versioned
    ctx.options = (delta_softplus, merge, backend)


def _backward(ctx, dy):
    u, delta, A, B, C, order = ctx.saved_tensors
    D, delta_bias = ctx.optional
    grads = _scan_backward_op(dy, u, delta, A, B, C, D, delta_bias, order, *ctx.options)
    return (*grads[:5], grads[5] if D is not None else None, grads[6] if delta_bias is not None else None,
            None, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta, A, B, C, D, delta_bias, order):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, order=order)
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if name != "order" and t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"selective_scan: {name} has dtype {t.dtype}; expected one of {_FLOAT_DTYPES}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be 3-D (batch, L, E), got shape {tuple(u.shape)}")
    if A.dim() != 3 or A.shape[1] != u.shape[2]:
        raise ValueError(f"selective_scan: A must be (K, E, N) with E = {u.shape[2]} (from u {tuple(u.shape)}), "
                         f"got {tuple(A.shape)}")
    (batch, L, E), (K, _, N) = u.shape, A.shape
    expected = dict(delta=(batch, L, K, E), B=(batch, L, K, N), C=(batch, L, K, N), D=(K, E), delta_bias=(K, E),
                    order=(K, L))
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape} (batch, L, E from u "
                             f"{tuple(u.shape)}; K, N from A {tuple(A.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B", "C"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"selective_scan: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")
    if order is not None and order.dtype != torch.int64:  # its values are checked by the backends
        raise TypeError(f"selective_scan: order must be int64, got {order.dtype}")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   delta_bias: Optional[Tensor] = None, delta_softplus: bool = False, order: Optional[Tensor] = None,
                   merge: bool = True, backend: Optional[str] = None) -> Tensor:
    """Selective scan of K directions over channels-last sequences; see `selective_scan_ref` for the math.

    u: (batch, L, E); delta: (batch, L, K, E); A: (K, E, N); B, C: (batch, L, K, N); D, delta_bias: (K, E) or None;
    order: int64 (K, L) or None (identity), row k a permutation of 0..L-1 (step t of direction k visits position
    order[k, t]; see `scan_orders`). Per-pixel inputs share one dtype (fp32, bf16, fp16 or fp64); A, D and
    delta_bias may be any float dtype. Returns y in u's dtype: (batch, L, E) summed over directions if `merge`, else
    (batch, L, K, E). Any strides are accepted.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, order)
    backend = SELECTIVE_SCAN_BACKENDS.check_name(backend)
    if order is None:
        order = identity_orders(A.shape[0], u.shape[1], u.device)
    args = [t.contiguous() for t in (u, delta, A, B, C)]
    optional = [None if t is None else t.contiguous() for t in (D, delta_bias)]
    return _scan_op(*args, *optional, order.contiguous(), bool(delta_softplus), bool(merge), backend)
