"""`selective_scan_2pass`: the two-pass 2D selective scan of 2DMamba / 2DVMamba (rows, then columns of the row
results) in VMamba's four cross-scan directions, a `torch.library` custom op; see `selective_scan_2pass_ref`.

Why not Mamba2D's `selective_scan_2d`: its state is a gated *average* of two one-step updates, h = wL (aL h_left +
xL) + wT (aT h_up + xT) with separate top / left gates and inputs and weights 1/2 inside the image. Here both passes
use the destination pixel's one gate and the input enters once: h = a h_up + g, g = a g_left + b, i.e.
h = a h_up + a h_left - a a_left h_diag + b. No choice of that op's gates, inputs and weights gives the diagonal
term (its weights are fixed), so neither its reference nor its kernels can serve this recurrence. Nor can the 1D
`selective_scan`: a pixel's state here sums over a whole quadrant, not a path.

Backends (`backends.OpBackends`; modules with `forward(...) -> y` and `backward(dy, ...) -> 7 grads`, the arguments
of the reference): "reference" (`selective_scan_2pass_ref`, pure PyTorch, any device), "cpu"
(`selective_scan_2pass_cpu`, compiled C++/OpenMP), "triton" (`selective_scan_2pass_triton`, CUDA; CPU tensors under
TRITON_INTERPRET=1). The backend is resolved inside the op, so compiled graphs keep the name (default "auto") as a
constant.
"""
from typing import Optional

import torch
from torch import Tensor

from .backends import OpBackends, backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op
from .selective_scan_2pass_ref import NUM_DIRECTIONS

SCAN_2PASS_BACKENDS = OpBackends("selective_scan_2pass", {"reference": "vision2d.ops.selective_scan_2pass_ref",
                                                          "cpu": "vision2d.ops.selective_scan_2pass_cpu",
                                                          "triton": "vision2d.ops.selective_scan_2pass_triton"})


@custom_op("vision2d::selective_scan_2pass")
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
             delta_bias: Optional[Tensor], delta_softplus: bool, height: int, width: int, merge: bool,
             backend: str) -> Tensor:
    return SCAN_2PASS_BACKENDS.forward(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge, backend):
    return u.new_empty(u.shape if merge else delta.shape)


@torch.library.custom_op("vision2d::selective_scan_2pass_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      delta_bias: Optional[Tensor], delta_softplus: bool, height: int, width: int, merge: bool,
                      backend: str) -> list[Tensor]:
    grads = SCAN_2PASS_BACKENDS.backward(backend, dy.contiguous(), u, delta, A, B, C, D, delta_bias, delta_softplus,
                                         height, width, merge)
    return backward_op_grads(grads, u)


@_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge, backend):
    return backward_op_fake((u, delta, A, B, C, D, delta_bias), u)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, *options = inputs
    ctx.save_for_backward(u, delta, A, B, C)
    ctx.optional = (D, delta_bias)  # parameters: kept by reference, not versioned
    ctx.options = options  # delta_softplus, height, width, merge, backend


def _backward(ctx, dy):
    D, delta_bias = ctx.optional
    grads = _scan_backward_op(dy, *ctx.saved_tensors, D, delta_bias, *ctx.options)
    return (*grads[:5], grads[5] if D is not None else None, grads[6] if delta_bias is not None else None,
            None, None, None, None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta, A, B, C, D, delta_bias, height, width):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    check_tensors("selective_scan_2pass", tensors)
    if u.dim() != 3:
        raise ValueError(f"selective_scan_2pass: u must be 3-D (batch, H * W, E), got shape {tuple(u.shape)}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or value < 0:  # SymInt: compiling
            raise ValueError(f"selective_scan_2pass: {name} must be an int >= 0, got {value!r}")
    if height * width != u.shape[1]:
        raise ValueError(f"selective_scan_2pass: u has {u.shape[1]} pixels but height * width = {height} * {width} "
                         f"= {height * width}")
    if A.dim() != 3 or A.shape[0] != NUM_DIRECTIONS or A.shape[1] != u.shape[2]:
        raise ValueError(f"selective_scan_2pass: A must be (K, E, N) with K = {NUM_DIRECTIONS} directions and "
                         f"E = {u.shape[2]} (from u {tuple(u.shape)}), got {tuple(A.shape)}")
    (batch, L, E), (K, _, N) = u.shape, A.shape
    expected = dict(delta=(batch, L, K, E), B=(batch, L, K, N), C=(batch, L, K, N), D=(K, E), delta_bias=(K, E))
    for name, shape in expected.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"selective_scan_2pass: {name} must have shape {shape} (batch, L, E from u "
                             f"{tuple(u.shape)}; K, N from A {tuple(A.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B", "C"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"selective_scan_2pass: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")


def selective_scan_2pass(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                         delta_bias: Optional[Tensor] = None, delta_softplus: bool = False, *, height: int,
                         width: int, merge: bool = True, backend: Optional[str] = None) -> Tensor:
    """Two-pass 2D selective scan in the four cross-scan directions over a row-major height x width map.

    u: (batch, H * W, E); delta: (batch, H * W, 4, E); A: (4, E, N); B, C: (batch, H * W, 4, N); D, delta_bias:
    (4, E) or None. Direction k's delta, B, C are read at each pixel (0: rows then columns from the top-left, 1:
    columns then rows from the top-left, 2 and 3: the same from the bottom-right). Per-pixel inputs share one dtype
    (fp32, bf16, fp16 or fp64); A, D and delta_bias may be any float dtype. Returns y in u's dtype: (batch, H * W, E)
    summed over directions if `merge`, else (batch, H * W, 4, E). Any strides are accepted.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias, height, width)
    backend = SCAN_2PASS_BACKENDS.check_name(backend)
    args = [t.contiguous() for t in (u, delta, A, B, C)]
    optional = [None if t is None else t.contiguous() for t in (D, delta_bias)]
    # height, width may be symbolic
    return call_op(_scan_op, *args, *optional, bool(delta_softplus), height, width, bool(merge), backend)
