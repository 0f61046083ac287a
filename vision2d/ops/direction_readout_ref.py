"""Pure-PyTorch reference of `direction_readout`, LocalMamba's gated sum over the directions of a K-direction scan's
unmerged output y (batch, L, K, E) with the mixer's out_norm and SiLU gate:
    out[b, l] = LayerNorm(sum_k gate[b, k] * y[b, l, k]) * silu(z[b, l])        (batch, L, E)
gate (batch, K, E), z (batch, L, E); the LayerNorm over the E channels with optional weight / bias (E) and eps.
Computed in the state dtype (float32, or float64 for float64 inputs); the output in y's dtype. `backward` writes the
gradients out (ATen's LayerNorm and SiLU backwards); it is the backward of every backend.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan2d_ref import state_dtype


def readout(y: Tensor, gate: Tensor, z: Tensor, norm_weight: Optional[Tensor], norm_bias: Optional[Tensor],
            eps: float) -> Tensor:
    """(batch, L, E) in y's dtype; differentiable by autograd."""
    sd = state_dtype(y.dtype)
    summed = (y.to(sd) * gate.to(sd).unsqueeze(1)).sum(2)
    weight, bias = (None if t is None else t.to(sd) for t in (norm_weight, norm_bias))
    return (F.layer_norm(summed, summed.shape[-1:], weight, bias, eps) * F.silu(z.to(sd))).to(y.dtype)


def backward(dout: Tensor, y: Tensor, gate: Tensor, z: Tensor, norm_weight: Optional[Tensor],
             norm_bias: Optional[Tensor], eps: float):
    """(dy, dgate, dz, dnorm_weight, dnorm_bias) in the inputs' dtypes (None for an absent weight / bias), the
    LayerNorm's statistics recomputed."""
    sd, E = state_dtype(y.dtype), y.shape[-1]
    x, g, zz, w, b = (None if t is None else t.to(sd) for t in (y, gate, z, norm_weight, norm_bias))
    summed = (x * g.unsqueeze(1)).sum(2)
    normed, mean, rstd = torch.ops.aten.native_layer_norm(summed, [E], w, b, eps)
    d_out = dout.to(sd)
    dz = torch.ops.aten.silu_backward(d_out * normed, zz)
    d_summed, dw, db = torch.ops.aten.native_layer_norm_backward(d_out * F.silu(zz), summed, [E], mean, rstd, w, b,
                                                                 [True, w is not None, b is not None])
    grads = (d_summed.unsqueeze(2) * g.unsqueeze(1), (d_summed.unsqueeze(2) * x).sum(1), dz, dw, db)
    return [None if d is None or t is None else d.to(t.dtype)
            for d, t in zip(grads, (y, gate, z, norm_weight, norm_bias))]


# the backend interface of `direction_readout`
forward = readout


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
