"""`state_scan_fusion`: Spatial-Mamba's structure-aware SSM core in one `torch.library` custom op: the selective scan
over a map's pixels in row-major order (`state_scan`), the fusion of its states by a depthwise k x k kernel over
border-replicated maps (`state_fusion`), the C read-out with the D skip, and optionally the LayerNorm over channels and
the SiLU gate that follow it in Spatial-Mamba:

    h = state_scan(u, delta, A, B, delta_bias, delta_softplus)                  states (batch, H W, N, E)
    y[b, i, j, e] = sum_n C[b, i, j, n] state_fusion(h[..., n, :], weight)[b, i, j, e] + D[e] u[b, i, j, e]
    y = layer_norm(y, (E,), norm_weight, norm_bias, norm_eps)                   if norm_eps is not None
    y = y * silu(gate)                                                          if gate is not None

Backends (the names of `state_scan` / `state_fusion`, resolved by `STATE_SCAN_BACKENDS`): "cpu" runs one fused kernel
call (`state_fusion_cpu.scan_fusion_forward`) that keeps one channel block's states in a buffer (in cache), so
neither the states nor the fused states are ever materialised; "reference" and "triton" compose
those backends of the two ops with the read-out, norm and gate in PyTorch. The backward (every backend) recomputes the
states from the saved inputs and runs the two ops' backwards: only the inputs are saved, less than the official module
holds (its states).
"""
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import state_fusion_cpu
from .backends import backward_op_fake, backward_op_grads, call_op, check_tensors, custom_op
from .scan2d_ref import state_dtype
from .state_fusion import STATE_FUSION_BACKENDS
from .state_fusion_ref import state_fusion_ref
from .state_scan import STATE_SCAN_BACKENDS
from .state_scan_ref import state_scan_ref


def _read_out(scan, fusion, u, delta, A, B, C, weight, D, delta_bias, delta_softplus):
    """(y before the norm and gate, the states h (batch, L, N, E), the fused states (batch, L, N, E)), in the state
    dtype, from a state scan and a state fusion (functions with those ops' arguments)."""
    (batch, H, W, E), N, L = u.shape, A.shape[1], u.shape[1] * u.shape[2]
    h = scan(u.reshape(batch, L, E), delta.reshape(batch, L, E), A, B.reshape(batch, L, N), delta_bias,
             delta_softplus)
    sd = state_dtype(u.dtype)
    fused = fusion(h.reshape(batch, H, W, N * E), weight.to(sd).repeat(N, 1, 1)).reshape(batch, L, N, E)
    y = (fused * C.reshape(batch, L, N, 1).to(sd)).sum(2)
    if D is not None:
        y = y + D.to(sd) * u.reshape(batch, L, E).to(sd)
    return y.view(u.shape), h, fused


def _norm_and_gate(y, norm_weight, norm_bias, norm_eps, gate):
    if norm_eps is not None:
        cast = (lambda t: None if t is None else t.to(y.dtype))
        y = F.layer_norm(y, y.shape[-1:], cast(norm_weight), cast(norm_bias), norm_eps)
    return y if gate is None else y * F.silu(gate.to(y.dtype))


def compose_state_scan_fusion(scan, fusion, u, delta, A, B, C, weight, D=None, delta_bias=None,
                              delta_softplus=False, norm_weight=None, norm_bias=None, norm_eps=None, gate=None):
    """The op's math from a state scan and a state fusion (functions with those ops' arguments), in u's dtype."""
    y = _read_out(scan, fusion, u, delta, A, B, C, weight, D, delta_bias, delta_softplus)[0]
    return _norm_and_gate(y, norm_weight, norm_bias, norm_eps, gate).to(u.dtype)


def state_scan_fusion_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                          D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                          norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                          norm_eps: Optional[float] = None, gate: Optional[Tensor] = None) -> Tensor:
    """The pure-PyTorch reference (`state_scan_ref`, `state_fusion_ref`, read-out, norm, gate); differentiable by
    autograd."""
    return compose_state_scan_fusion(state_scan_ref, state_fusion_ref, u, delta, A, B, C, weight, D, delta_bias,
                                     delta_softplus, norm_weight, norm_bias, norm_eps, gate)


@custom_op("vision2d::state_scan_fusion")
def _state_scan_fusion_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                          D: Optional[Tensor], delta_bias: Optional[Tensor], norm_weight: Optional[Tensor],
                          norm_bias: Optional[Tensor], gate: Optional[Tensor], delta_softplus: bool,
                          norm_eps: Optional[float], backend: str) -> Tensor:
    backend = STATE_SCAN_BACKENDS.resolve(u.device, backend)
    if backend == "cpu":
        return state_fusion_cpu.scan_fusion_forward(u, delta, A, B, C, D, delta_bias, weight, delta_softplus,
                                                    norm_weight, norm_bias, norm_eps, gate)
    return compose_state_scan_fusion(partial(STATE_SCAN_BACKENDS.forward, backend),
                                     partial(STATE_FUSION_BACKENDS.forward, backend), u, delta, A, B, C, weight, D,
                                     delta_bias, delta_softplus, norm_weight, norm_bias, norm_eps, gate)


@_state_scan_fusion_op.register_fake
def _(u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate, delta_softplus, norm_eps, backend):
    return torch.empty_like(u)


def _norm_and_gate_backward(dout, y, norm_weight, norm_bias, norm_eps, gate):
    """(dy, dnorm_weight, dnorm_bias, dgate) of `_norm_and_gate` at y (batch, L, E) (state dtype; None for what is
    absent), by ATen's LayerNorm and SiLU backward kernels."""
    E, cast = y.shape[-1], (lambda t: None if t is None else t.to(y.dtype))
    norm_weight, norm_bias = cast(norm_weight), cast(norm_bias)
    normed, g, dnorm_weight, dnorm_bias, dgate = y, dout, None, None, None
    if norm_eps is not None:
        normed, mean, rstd = torch.ops.aten.native_layer_norm(y, [E], norm_weight, norm_bias, norm_eps)
    if gate is not None:
        z = gate.to(y.dtype).view(y.shape)
        dgate = torch.ops.aten.silu_backward(g * normed, z)
        g = g * F.silu(z)
    if norm_eps is None:
        return g, dnorm_weight, dnorm_bias, dgate
    mask = [True, norm_weight is not None, norm_bias is not None]
    dy, dnorm_weight, dnorm_bias = torch.ops.aten.native_layer_norm_backward(g, y, [E], mean, rstd, norm_weight,
                                                                             norm_bias, mask)
    return dy, dnorm_weight, dnorm_bias, dgate


@torch.library.custom_op("vision2d::state_scan_fusion_backward", mutates_args=())
def _state_scan_fusion_backward_op(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                   weight: Tensor, D: Optional[Tensor], delta_bias: Optional[Tensor],
                                   norm_weight: Optional[Tensor], norm_bias: Optional[Tensor], gate: Optional[Tensor],
                                   delta_softplus: bool, norm_eps: Optional[float], backend: str) -> list[Tensor]:
    """(du, ddelta, dA, dB, dC, dweight, dD, ddelta_bias, dnorm_weight, dnorm_bias, dgate) in the inputs' dtypes; an
    empty tensor for an absent input."""
    backend = STATE_SCAN_BACKENDS.resolve(u.device, backend)
    (batch, H, W, E), N, L = u.shape, A.shape[1], u.shape[1] * u.shape[2]
    y, h, fused = _read_out(partial(STATE_SCAN_BACKENDS.forward, backend),
                            partial(STATE_FUSION_BACKENDS.forward, backend), u, delta, A, B, C, weight, D, delta_bias,
                            delta_softplus)
    sd = h.dtype
    dy, dnorm_weight, dnorm_bias, dgate = _norm_and_gate_backward(dout.to(sd).view(batch, L, E), y.view(batch, L, E),
                                                                  norm_weight, norm_bias, norm_eps, gate)
    g = dy.view(batch, L, 1, E)
    dC = (fused * g).sum(-1)
    del fused
    weights = weight.to(sd).repeat(N, 1, 1)
    d_fused = (g * C.reshape(batch, L, N, 1).to(sd)).view(batch, H, W, N * E)
    d_states, dweight = STATE_FUSION_BACKENDS.backward(backend, d_fused, h.view(batch, H, W, N * E), weights)
    sequences = [t.reshape(batch, L, -1) for t in (u, delta, B)]
    du, ddelta, dA, dB, d_bias = STATE_SCAN_BACKENDS.backward(backend, d_states.view(batch, L, N, E), *sequences[:2],
                                                               A, sequences[2], delta_bias, delta_softplus, h)
    dD = u.new_empty(0)
    if D is not None:
        g = g.view(batch, L, E)
        du = (du.to(sd) + g * D.to(sd)).to(u.dtype)
        dD = (g * sequences[0].to(sd)).sum((0, 1)).to(D.dtype)
    grads = [du.view(u.shape), ddelta.view(delta.shape), dA, dB.view(B.shape), dC.view(C.shape).to(C.dtype),
             dweight.view(N, E, *weight.shape[1:]).sum(0).to(weight.dtype), dD, d_bias]
    grads += [dnorm_weight, dnorm_bias, None if dgate is None else dgate.view(gate.shape)]
    inputs = (u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate)
    # weight may be a view: its gradient is returned contiguous
    grads = [None if grad is None or t is None else grad.to(t.dtype) for grad, t in zip(grads, inputs)]
    return backward_op_grads(grads, u)


@_state_scan_fusion_backward_op.register_fake
def _(dout, u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate, delta_softplus, norm_eps,
      backend):
    return backward_op_fake((u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate), u)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.options = inputs[11:]


def _backward(ctx, dout):
    inputs = ctx.saved_tensors
    grads = _state_scan_fusion_backward_op(dout.contiguous(), *inputs, *ctx.options)
    return (*[g if t is not None else None for g, t in zip(grads, inputs)], None, None, None)


_state_scan_fusion_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate):
    """Raises a TypeError / ValueError naming the bad argument and the expected shape or dtype."""
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, weight=weight, D=D, delta_bias=delta_bias,
                   norm_weight=norm_weight, norm_bias=norm_bias, gate=gate)
    check_tensors("state_scan_fusion", tensors, required=("u", "delta", "A", "B", "C", "weight"))
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
    shapes = dict(delta=(batch, H, W, E), B=(batch, H, W, N), C=(batch, H, W, N), D=(E,), delta_bias=(E,),
                  norm_weight=(E,), norm_bias=(E,), gate=(batch, H, W, E))
    for name, shape in shapes.items():
        if tensors[name] is not None and tuple(tensors[name].shape) != shape:
            raise ValueError(f"state_scan_fusion: {name} must have shape {shape} (batch, H, W, E from u "
                             f"{tuple(u.shape)}; N from A {tuple(A.shape)}), got {tuple(tensors[name].shape)}")
    for name in ("delta", "B", "C", "gate"):
        if tensors[name] is not None and tensors[name].dtype != u.dtype:
            raise TypeError(f"state_scan_fusion: {name} has dtype {tensors[name].dtype} but u has {u.dtype}; "
                            f"per-pixel inputs must share one dtype")


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def state_scan_fusion(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, weight: Tensor,
                      D: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                      norm_weight: Optional[Tensor] = None, norm_bias: Optional[Tensor] = None,
                      norm_eps: Optional[float] = None, gate: Optional[Tensor] = None,
                      backend: Optional[str] = None) -> Tensor:
    """y = C . state_fusion(state_scan(u, ...), weight) + D u over channels-last maps, then LayerNorm over channels
    (when norm_eps is given) and y * silu(gate) (when gate is given); see the module docstring.

    u, delta: (batch, H, W, E), scanned in row-major pixel order; A: (E, N); B, C: (batch, H, W, N); weight: (E, k, k)
    with k odd (`merge_dilated_kernels`); D, delta_bias, norm_weight, norm_bias: (E) or None; gate: (batch, H, W, E)
    or None. u, delta, B, C and gate share one dtype (fp32, bf16, fp16 or fp64); the other tensors may be any float
    dtype. Computes in float32 (float64 for float64 u) and returns (batch, H, W, E) in u's dtype. Any strides are
    accepted.
    """
    _check_inputs(u, delta, A, B, C, weight, D, delta_bias, norm_weight, norm_bias, gate)
    if (norm_weight is not None or norm_bias is not None) and norm_eps is None:
        raise ValueError("state_scan_fusion: norm_weight / norm_bias given without norm_eps (the LayerNorm's eps)")
    backend = STATE_SCAN_BACKENDS.check_name(backend)
    optional = [None if t is None else t.contiguous() for t in (D, delta_bias, norm_weight, norm_bias, gate)]
    return call_op(_state_scan_fusion_op, *[t.contiguous() for t in (u, delta, A, B, C)], weight, *optional,
                   bool(delta_softplus), None if norm_eps is None else float(norm_eps),
                   backend)  # the backends take any weight layout
