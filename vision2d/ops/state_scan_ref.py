"""Pure-PyTorch reference of `state_scan`: the 1D selective scan (one direction, storage order) that returns every
hidden state instead of reading it out (Spatial-Mamba fuses the states in 2D before the C read-out).

Shapes (channels-last): u, delta (batch, L, E); A (E, N); B (batch, L, N); delta_bias (E) or None. For channel e,
state n and step t:
    dt = delta[b, t, e] + delta_bias[e];  dt = softplus(dt) if delta_softplus
    h[b, t, n, e] = exp(dt * A[e, n]) * h[b, t - 1, n, e] + dt * B[b, t, n] * u[b, t, e]      (h[b, -1] = 0)
Returns h (batch, L, N, E) in the state dtype: float32, or float64 for float64 inputs (half inputs give float32
states, as the official kernel's `out_float`).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan2d_ref import state_dtype


def _prepare(u, delta, A, B, delta_bias, delta_softplus):
    """(dt (batch, L, 1, E), dt * u (batch, L, 1, E), gates exp(dt A) (batch, L, N, E), B (batch, L, N, 1))."""
    sd = state_dtype(u.dtype)
    dt = delta.to(sd) + (delta_bias.to(sd) if delta_bias is not None else 0)
    dt = (F.softplus(dt) if delta_softplus else dt)[:, :, None, :]
    gate = torch.exp(dt * A.to(sd).t())
    return dt, dt * u.to(sd)[:, :, None, :], gate, B.to(sd)[..., None]


def state_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False) -> Tensor:
    """Every state h (batch, L, N, E), one step at a time; differentiable by autograd."""
    _, dtu, gate, Bs = _prepare(u, delta, A, B, delta_bias, delta_softplus)
    h = gate.new_zeros(gate.shape[:1] + gate.shape[2:])
    states = []
    for t in range(gate.shape[1]):
        h = gate[:, t] * h + dtu[:, t] * Bs[:, t]
        states.append(h)
    return torch.stack(states, dim=1) if states else torch.zeros_like(gate)


def state_scan_ref_backward(dh, u, delta, A, B, delta_bias, delta_softplus, h):
    """Gradients of `state_scan_ref` written out, given the upstream dh and the forward's states h (batch, L, N, E).

    lam_t = dh_t + exp(dt_{t+1} A) lam_{t+1}; lam_t is the gradient of the input dt_t B_t u_t and
    lam_t h_{t-1} exp(dt_t A) that of the exponent dt_t A. Returns (du, ddelta, dA, dB, ddelta_bias) in the inputs'
    dtypes (None for an absent delta_bias).
    """
    dt, dtu, gate, Bs = _prepare(u, delta, A, B, delta_bias, delta_softplus)
    sd, L = gate.dtype, gate.shape[1]
    dh, h = dh.to(sd), h.to(sd)
    lam, lams = torch.zeros_like(gate[:, 0]), []
    for t in reversed(range(L)):
        lam = dh[:, t] + (gate[:, t + 1] * lam if t + 1 < L else 0)
        lams.append(lam)
    lam = torch.stack(lams[::-1], dim=1) if lams else torch.zeros_like(gate)
    h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
    d_exponent = lam * h_prev * gate  # (batch, L, N, E)
    lam_b = (lam * Bs).sum(2)  # (batch, L, E)
    ddt = (d_exponent * A.to(sd).t()).sum(2) + lam_b * u.to(sd)
    dA = (d_exponent * dt).sum((0, 1)).t()
    dB = (lam * dtu).sum(-1)
    du = lam_b * dt[:, :, 0]
    if delta_softplus:
        ddt = ddt * torch.sigmoid(delta.to(sd) + (delta_bias.to(sd) if delta_bias is not None else 0))
    d_bias = None if delta_bias is None else ddt.sum((0, 1)).to(delta_bias.dtype)
    return du.to(u.dtype), ddt.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), d_bias


def state_scan_naive(u, delta, A, B, delta_bias=None, delta_softplus=False):
    """Scalar loop written straight from the recurrence (slow; tests only check the reference against it)."""
    sd = state_dtype(u.dtype)
    (batch, L, E), N = u.shape, A.shape[1]
    dt = delta.to(sd) + (delta_bias.to(sd) if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    h = torch.zeros(batch, L, N, E, dtype=sd)
    for b in range(batch):
        for e in range(E):
            for n in range(N):
                state = torch.zeros((), dtype=sd)
                for t in range(L):
                    state = torch.exp(dt[b, t, e] * A[e, n].to(sd)) * state + dt[b, t, e] * B[b, t, n].to(sd) * u[
                        b, t, e].to(sd)
                    h[b, t, n, e] = state
    return h


# the backend interface of `state_scan`
forward = state_scan_ref
backward = state_scan_ref_backward


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
