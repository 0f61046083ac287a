"""`direction_readout`: LocalMamba's gated sum over the directions of a K-direction scan's unmerged output y
(batch, L, K, E) with the mixer's out_norm and SiLU gate, LayerNorm(sum_k gate_k y_k) * silu(z) -> (batch, L, E), a
`torch.library` custom op (math in `direction_readout_ref`).

Backends (`backends.OpBackends`): "reference" (`direction_readout_ref`), "cpu" (`direction_readout_cpu`, C++/OpenMP:
one pass over y that writes each output pixel once, where the composition of ATen ops writes the sum, the normalised
map and the gate). On CUDA the reference runs. The backward of both is `direction_readout_ref.backward` (statistics
recomputed).
"""
from typing import Optional

import torch
from torch import Tensor

from . import direction_readout_ref
from .backends import FLOAT_DTYPES, OpBackends, backward_op_fake, backward_op_grads, call_op, custom_op

DIRECTION_READOUT_BACKENDS = OpBackends("direction_readout", {"reference": "vision2d.ops.direction_readout_ref",
                                                              "cpu": "vision2d.ops.direction_readout_cpu"})


@custom_op("vision2d::direction_readout")
def _readout_op(y: Tensor, gate: Tensor, z: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor],
                eps: float, backend: str) -> Tensor:
    return DIRECTION_READOUT_BACKENDS.forward(backend, y, gate, z, norm_weight, norm_bias, eps)


@_readout_op.register_fake
def _(y, gate, z, norm_weight, norm_bias, eps, backend):
    return y.new_empty(y.shape[0], y.shape[1], y.shape[3])


@torch.library.custom_op("vision2d::direction_readout_backward", mutates_args=())
def _readout_backward_op(dout: Tensor, y: Tensor, gate: Tensor, z: Tensor, norm_weight: Optional[Tensor],
                         norm_bias: Optional[Tensor], eps: float) -> list[Tensor]:
    return backward_op_grads(direction_readout_ref.backward(dout, y, gate, z, norm_weight, norm_bias, eps), y)


@_readout_backward_op.register_fake
def _(dout, y, gate, z, norm_weight, norm_bias, eps):
    return backward_op_fake((y, gate, z, norm_weight, norm_bias), y)


def _setup_context(ctx, inputs, output):
    *tensors, eps, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.present = [t is not None for t in tensors]
    ctx.eps = eps


def _backward(ctx, dout):
    grads = _readout_backward_op(dout, *ctx.saved_tensors, ctx.eps)
    return (*(g if present else None for g, present in zip(grads, ctx.present)), None, None)


_readout_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(y, **tensors):
    """Raises a TypeError / ValueError naming the bad argument; the expected shapes from y (batch, L, K, E)."""
    if not isinstance(y, Tensor) or y.dim() != 4:
        raise ValueError(f"direction_readout: y must be a 4-D tensor (batch, L, K, E), got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    batch, L, K, E = y.shape
    expected = dict(gate=(batch, K, E), z=(batch, L, E), norm_weight=(E,), norm_bias=(E,))
    for name, t in dict(y=y, **tensors).items():
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"direction_readout: {name} must be a float tensor, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
        if t.device != y.device:
            raise ValueError(f"direction_readout: {name} is on {t.device} but y is on {y.device}")
        if name != "y" and tuple(t.shape) != expected[name]:
            raise ValueError(f"direction_readout: {name} must have shape {expected[name]} (from y {tuple(y.shape)}), "
                             f"got {tuple(t.shape)}")


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def direction_readout(y: Tensor, gate: Tensor, z: Tensor, norm_weight: Optional[Tensor] = None,
                      norm_bias: Optional[Tensor] = None, eps: float = 1e-5, backend: Optional[str] = None) -> Tensor:
    """LayerNorm(sum_k gate[:, k] * y[:, :, k]) * silu(z): y (batch, L, K, E), gate (batch, K, E), z (batch, L, E),
    norm_weight / norm_bias (E) or None -> (batch, L, E) in y's dtype. Any strides are accepted."""
    _check_inputs(y, gate=gate, z=z, norm_weight=norm_weight, norm_bias=norm_bias)
    backend = DIRECTION_READOUT_BACKENDS.check_name(backend)
    # y as it is: the backends take any strides (the cpu kernel reads the first L pixels of a padded scan output in
    # place and copies other layouts)
    return call_op(_readout_op, y, gate.contiguous(), z.contiguous(),
                   *(None if t is None else t.contiguous() for t in (norm_weight, norm_bias)), float(eps), backend)
