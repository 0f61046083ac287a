"""`state_scan_fusion`: Spatial-Mamba's structure-aware SSM core in one `torch.library` custom op: the selective scan
over a map's pixels in row-major order (`state_scan`), the fusion of its states by a depthwise k x k kernel over
border-replicated maps (`state_fusion`), and the C read-out with the D skip:

    h = state_scan(u, delta, A, B, delta_bias, delta_softplus)                  states (batch, H W, N, E)
    y[b, i, j, e] = sum_n C[b, i, j, n] state_fusion(h[..., n, :], weight)[b, i, j, e] + D[e] u[b, i, j, e]

Backends (the names of `state_scan` / `state_fusion`, resolved by `STATE_SCAN_BACKENDS`): "cpu" runs one fused kernel
pass (`state_fusion_cpu.scan_fusion_forward`) in which each task keeps its channel block's states in a per-thread
buffer, so neither the states nor the fused states are ever materialised; "reference" and "triton" compose those
backends of the two ops with the read-out in PyTorch. The backward (every backend) recomputes the states from the
saved inputs and runs the two ops' backwards: only the inputs are saved, less than the official module holds (its
states).
"""
from functools import partial
from typing import Optional

import torch
from torch import Tensor

from . import state_fusion_cpu
from .state_fusion import STATE_FUSION_BACKENDS
from .state_fusion_ref import state_fusion_ref
from .state_scan import STATE_SCAN_BACKENDS
from .state_scan_ref import state_scan_ref

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def compose_state_scan_fusion(scan, fusion, u, delta, A, B, C, weight, D, delta_bias, delta_softplus):
    """The op's math from a state scan and a state fusion (functions with those ops' arguments)."""
    (batch, H, W, E), N = u.shape, A.shape[1]
    h = scan(u.reshape(batch, H * W, E), delta.reshape(batch, H * W, E), A, B.reshape(batch, H * W, N), delta_bias,
             delta_softplus)
    fused = fusion(h.reshape(batch, H, W, N * E), weight.repeat(N, 1, 1)).reshape(batch, H, W, N, E)
    y = (fused * C.to(fused.dtype)[..., None]).sum(3)
    if D is not None:
        y = y + D.to(y.dtype) * u.to(y.dtype)
    return y.to(u.dtype)


def state_scan_fusion_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                          D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                          delta_softplus: bool = False) -> Tensor:
    """The pure-PyTorch reference (`state_scan_ref`, `state_fusion_ref` and the read-out); differentiable by autograd."""
    return compose_state_scan_fusion(state_scan_ref, state_fusion_ref, u, delta, A, B, C, weight, D, delta_bias, delta_softplus)


@torch.library.custom_op("vision2d::state_scan_fusion", mutates_args=())
def _state_scan_fusion_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                          D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                          backend: str) -> Tensor:
    backend = STATE_SCAN_BACKENDS.resolve(u.device, backend)
    if backend == "cpu":
        return state_fusion_cpu.scan_fusion_forward(u, delta, A, B, C, D, delta_bias, weight, delta_softplus)
    return compose_state_scan_fusion(partial(STATE_SCAN_BACKENDS.forward, backend), partial(STATE_FUSION_BACKENDS.forward, backend),
                    u, delta, A, B, C, weight, D, delta_bias, delta_softplus)


@_state_scan_fusion_op.register_fake
def _(u, delta, A, B, C, weight, D, delta_bias, delta_softplus, backend):
    return torch.empty_like(u)


@torch.library.custom_op("vision2d::state_scan_fusion_backward", mutates_args=())
def _state_scan_fusion_backward_op(dy: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                   weight: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
                                   delta_softplus: bool, backend: str) -> list[Tensor]:
    """(du, ddelta, dA, dB, dC, dweight, dD, ddelta_bias) in the inputs' dtypes; an empty tensor for an absent input."""
    backend = STATE_SCAN_BACKENDS.resolve(u.device, backend)
    (batch, H, W, E), N, L = u.shape, A.shape[1], u.shape[1] * u.shape[2]
    sequences = [t.reshape(batch, L, -1) for t in (u, delta, B)]
    h = STATE_SCAN_BACKENDS.forward(backend, *sequences[:2], A, sequences[2], delta_bias, delta_softplus)
    sd = h.dtype
    states, weights = h.view(batch, H, W, N * E), weight.repeat(N, 1, 1)
    fused = STATE_FUSION_BACKENDS.forward(backend, states, weights).view(batch, L, N, E)
    g = dy.reshape(batch, L, 1, E).to(sd)
    dC = (fused * g).sum(-1)
    del fused
    d_fused = (g * C.reshape(batch, L, N, 1).to(sd)).view(batch, H, W, N * E)
    d_states, dweight = STATE_FUSION_BACKENDS.backward(backend, d_fused, states, weights)
    du, ddelta, dA, dB, d_bias = STATE_SCAN_BACKENDS.backward(backend, d_states.view(batch, L, N, E), *sequences[:2],
                                                               A, sequences[2], delta_bias, delta_softplus, h)
    dD = u.new_empty(0)
    if D is not None:
        g = g.view(batch, L, E)
        du = (du.to(sd) + g * D.to(sd)).to(u.dtype)
        dD = (g * sequences[0].to(sd)).sum((0, 1)).to(D.dtype)
    return [du.view(u.shape), ddelta.view(delta.shape), dA, dB.view(B.shape), dC.view(C.shape).to(C.dtype),
            dweight.view(N, E, *weight.shape[1:]).sum(0).to(weight.dtype), dD,
            d_bias if d_bias is not None else u.new_empty(0)]


@_state_scan_fusion_backward_op.register_fake
def _(dy, u, delta, A, B, C, weight, D, delta_bias, delta_softplus, backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, weight, D,
                                                                                 delta_bias)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.options = inputs[8:]


def _backward(ctx, dy):
    u, delta, A, B, C, weight, D, delta_bias = ctx.saved_tensors
    grads = _state_scan_fusion_backward_op(dy.contiguous(), u, delta, A, B, C, weight, D, delta_bias, *ctx.options)
    return (*grads[:6], grads[6] if D is not None else None, grads[7] if delta_bias is not None else None, None,
            None)


_state_scan_fusion_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta, A, B, C, weight, D, delta_bias):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, weight=weight, D=D, delta_bias=delta_bias)
    for name, t in tensors.items():
        if t is None and name in ("D", "delta_bias"):
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"state_scan_fusion: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"state_scan_fusion: {name} has dtype {t.dtype}; expected one of {_FLOAT_DTYPES}")
        if t.device != u.device:
            raise ValueError(f"state_scan_fusion: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 4:
        raise ValueError(f"state_scan_fusion: u must be 4-D channels-last (batch, H, W, E), got shape "
                         f"{tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[3]:
        raise ValueError(f"state_scan_fusion: A must be (E, N) with E = {u.shape[3]} (from u {tuple(u.shape)}), "
                         f"got {tuple(A.shape)}")
    (batch, H, W, E), N = u.shape, A.shape[1]
    k = weight.shape[-1] if weight.dim() == 3 else 0
    if weight.dim() != 3 or tuple(weight.shape) != (E, k, k) or k % 2 == 0:
        raise ValueError(f"state_scan_fusion: weight must be (E, k, k) with E = {E} (from u {tuple(u.shape)}) and "
                         f"k odd, got {tuple(weight.shape)}")
    shapes = dict(delta=(batch, H, W, E), B=(batch, H, W, N), C=(batch, H, W, N), D=(E,), delta_bias=(E,))
    for name, shape in shapes.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"state_scan_fusion: {name} must have shape {shape} (batch, H, W, E from u "
                             f"{tuple(u.shape)}; N from A {tuple(A.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B", "C"):
        if tensors[name].dtype != u.dtype:
            raise TypeError(f"state_scan_fusion: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def state_scan_fusion(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                      D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                      backend: Optional[str] = None) -> Tensor:
    """y = C . state_fusion(state_scan(u, ...), weight) + D u over channels-last maps (see the module docstring).

    u, delta: (batch, H, W, E), scanned in row-major pixel order; A: (E, N); B, C: (batch, H, W, N); weight: (E, k, k)
    with k odd (`merge_dilated_kernels`); D, delta_bias: (E) or None. u, delta, B and C share one dtype (fp32, bf16,
    fp16 or fp64); A, weight, D and delta_bias may be any float dtype. Computes in float32 (float64 for float64 u) and
    returns y (batch, H, W, E) in u's dtype. Any strides are accepted.
    """
    _check_inputs(u, delta, A, B, C, weight, D, delta_bias)
    backend = STATE_SCAN_BACKENDS.check_name(backend)
    optional = [None if t is None else t.contiguous() for t in (D, delta_bias)]
    return _state_scan_fusion_op(*[t.contiguous() for t in (u, delta, A, B, C)], weight, *optional,
                                 bool(delta_softplus), backend)  # the backends take any weight layout
