"""Pure-PyTorch reference of the 1D selective scan (Mamba's S6) with K scan directions (the oracle for every backend).

Shapes (channels-last, storage order): u (batch, L, E); delta (batch, L, K, E); A (K, E, N); B, C (batch, L, K, N);
D, delta_bias (K, E); order int64 (K, L), row k a permutation of 0..L-1 (scan step t of direction k visits position
order[k, t]). With delta_proj_weight (K, E, R), delta is instead the low-rank (batch, L, K, R) input of each
direction's delta projection (Mamba's dt_proj): delta[b, p, k, e] below stands for sum_r delta[b, p, k, r]
delta_proj_weight[k, e, r], computed in the state dtype. For every direction k, channel e and step t with
p = order[k, t]:
    dt = delta[b, p, k, e] + delta_bias[k, e];  dt = softplus(dt) if delta_softplus
    h_t = exp(dt * A[k, e]) * h_{t-1} + dt * B[b, p, k] * u[b, p, e]        (h_{-1} = 0, h_t has N entries)
    y_k[b, p, e] = C[b, p, k] . h_t + D[k, e] * u[b, p, e]
merge=True returns sum_k y_k (batch, L, E), else y (batch, L, K, E); y is in u's dtype. The state is float32
(float64 for float64 inputs).

Periodic inputs: order may be (K, s L) for per-pixel inputs (u, delta, B, C) of L positions: the sequence is then s
copies of them (position p reads them at p mod L; `periodic_inputs` writes the copies out) and y has s L positions.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan2d_ref import state_dtype


def identity_orders(K: int, L: int, device=None) -> Tensor:
    """(K, L) int64: every direction scans the storage order."""
    return torch.arange(L, device=device).expand(K, L)


ORDER_ERROR = "selective_scan: every row of order must be a permutation of 0..L-1"


def periodic_inputs(length: int, *tensors: Tensor):
    """The per-pixel inputs (batch, L, ...) of a sequence of `length` = s L positions: each repeated s times along its
    positions (as they are when length == L)."""
    return [t if t.shape[1] == length else t.repeat(1, length // t.shape[1], *([1] * (t.dim() - 2))) for t in tensors]


def check_orders(order: Tensor):
    """Raises ValueError(ORDER_ERROR) unless every row of `order` (K, L) is a permutation of 0..L-1."""
    K, L = order.shape
    if order.device.type != "meta" and order.numel() > 0:
        if not torch.equal(order.sort(dim=1).values, identity_orders(K, L, order.device)):
            raise ValueError(ORDER_ERROR)


# K R up to which the delta projection runs as one product with the block-diagonal weight (K R, K E) rather than K
# batched ones: it writes the (batch, L, K, E) layout directly, and its backward needs no copies of the (batch, L, K, E)
# gradient (1 thread, batch 2, L 3136, K 4, E 192, R 6: forward 4.7 vs 7.2 ms, backward 11 vs 39 ms; at R 24, E 768
# the batched products win)
BLOCK_DIAGONAL_MAX = 48


def _block_diagonal(delta_proj_weight: Tensor) -> Tensor:
    """(K, E, R) -> the block-diagonal (K R, K E) matrix of the K transposed weights."""
    return torch.block_diag(*delta_proj_weight.transpose(1, 2).unbind(0))


def project_delta(delta: Tensor, delta_proj_weight: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """delta in `dtype`, (batch, L, K, E): as given, or each direction's projection of the low-rank delta
    (batch, L, K, R) by delta_proj_weight (K, E, R) (contiguous; differentiable)."""
    delta = delta.to(dtype)
    if delta_proj_weight is None:
        return delta
    weight = delta_proj_weight.to(dtype)
    (batch, L, K, R), E = delta.shape, weight.shape[1]
    if K * R <= BLOCK_DIAGONAL_MAX:
        return (delta.reshape(batch * L, K * R) @ _block_diagonal(weight)).view(batch, L, K, E)
    return torch.einsum("blkr,ker->blke", delta, weight).contiguous()


def project_delta_backward(ddelta: Tensor, delta: Tensor, delta_proj_weight: Tensor):
    """Gradients of `project_delta` for the low-rank delta and delta_proj_weight, in their dtypes (contiguous), from
    the gradient ddelta (batch, L, K, E) of the projected delta (in the state dtype)."""
    sd = ddelta.dtype
    weight, low = delta_proj_weight.to(sd), delta.to(sd)
    (batch, L, K, E), R = ddelta.shape, weight.shape[2]
    if K * R <= BLOCK_DIAGONAL_MAX:
        flat = ddelta.reshape(batch * L, K * E)
        d_low = (flat @ _block_diagonal(weight).t()).view(batch, L, K, R)
        blocks = (low.reshape(batch * L, K * R).t() @ flat).view(K, R, K, E)  # [k, r, k', e]; k = k' needed
        d_weight = blocks.diagonal(dim1=0, dim2=2).permute(2, 1, 0)  # (K, E, R)
    else:
        d_low = torch.einsum("blke,ker->blkr", ddelta, weight)
        d_weight = torch.einsum("blke,blkr->ker", ddelta, low)
    return d_low.to(delta.dtype).contiguous(), d_weight.to(delta_proj_weight.dtype).contiguous()


def _step_sizes(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool, dtype: torch.dtype,
                delta_proj_weight: Optional[Tensor] = None) -> Tensor:
    """delta (projected if delta_proj_weight is given) (+ delta_bias), softplus-ed if asked, in the state dtype;
    (batch, L, K, E)."""
    dt = project_delta(delta, delta_proj_weight, dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)
    return F.softplus(dt) if delta_softplus else dt


def _gather_steps(x: Tensor, steps: Tensor) -> Tensor:
    """x (batch, L, K, F) in storage order -> scan order: entry [b, t, k] is x[b, order[k, t], k]."""
    return x.gather(1, steps[None, :, :, None].expand(x.shape[0], *steps.shape, x.shape[-1]))


def _scatter_steps(x: Tensor, steps: Tensor) -> Tensor:
    """Inverse of `_gather_steps`: scan order -> storage order."""
    return torch.zeros_like(x).scatter(1, steps[None, :, :, None].expand(x.shape[0], *steps.shape, x.shape[-1]), x)


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus, order, delta_proj_weight=None):
    """Inputs in the state dtype and in scan order (batch, L, K, E|N), and the gates exp(dt * A) (batch, L, K, E, N)."""
    sd = state_dtype(u.dtype)
    Bsz, L, E = u.shape
    K = A.shape[0]
    steps = (identity_orders(K, L, u.device) if order is None else order).t()  # (L, K)
    s = dict(steps=steps, A=A.to(sd), u=u.to(sd)[:, steps],
             dt=_gather_steps(_step_sizes(delta, delta_bias, delta_softplus, sd, delta_proj_weight), steps),
             B=_gather_steps(B.to(sd), steps), C=_gather_steps(C.to(sd), steps))
    s["gate"] = torch.exp(s["dt"][..., None] * s["A"])
    return s


def _states(s) -> Tensor:
    """All states h_t in scan order, (batch, L, K, E, N)."""
    gate = s["gate"]
    h = gate.new_zeros(gate.shape[:1] + gate.shape[2:])
    states = []
    for t in range(gate.shape[1]):
        h = gate[:, t] * h + (s["dt"][:, t] * s["u"][:, t])[..., None] * s["B"][:, t, :, None, :]
        states.append(h)
    return torch.stack(states, dim=1) if states else torch.zeros_like(gate)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                       delta_bias: Optional[Tensor] = None, delta_softplus: bool = False,
                       order: Optional[Tensor] = None, merge: bool = True,
                       delta_proj_weight: Optional[Tensor] = None) -> Tensor:
    """Reference selective scan, one step of all directions at a time; differentiable by autograd."""
    if order is not None:
        check_orders(order)
        u, delta, B, C = periodic_inputs(order.shape[1], u, delta, B, C)
    s = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, order, delta_proj_weight)
    y = _scatter_steps(torch.einsum("btken,btkn->btke", _states(s), s["C"]), s["steps"])  # (batch, L, K, E)
    if D is not None:
        y = y + D.to(y.dtype) * u.to(y.dtype)[:, :, None, :]
    return (y.sum(2) if merge else y).to(u.dtype)


def selective_scan_ref_backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge,
                                delta_proj_weight=None):
    """Gradients of `selective_scan_ref` written out (the adjoint recurrence every backend implements).

    In scan order, lam_t = C_t dy_t + exp(dt_{t+1} A) lam_{t+1}; then dx_t = lam_t for the input dt_t B_t u_t and
    lam_t h_{t-1} exp(dt_t A) for the exponent dt_t A. Returns (du, ddelta, dA, dB, dC, dD, ddelta_bias,
    ddelta_proj_weight), each in its input's dtype (None for an absent D / delta_bias / delta_proj_weight).
    """
    s = _prepare(u, delta, A, B, C, delta_bias, delta_softplus, order, delta_proj_weight)
    hs = _states(s)
    sd, (Bsz, L, K, E, N) = hs.dtype, hs.shape
    dy_k = dy.to(sd)[:, :, None, :].expand(Bsz, L, K, E) if merge else dy.to(sd)
    dy_s = _gather_steps(dy_k, s["steps"])
    g = dy_s[..., None] * s["C"][:, :, :, None, :]  # direct state gradient
    lam = hs.new_zeros(hs.shape[:1] + hs.shape[2:])
    lams = []
    for t in reversed(range(L)):
        lam = g[:, t] + (s["gate"][:, t + 1] * lam if t + 1 < L else 0)
        lams.append(lam)
    lam = torch.stack(lams[::-1], dim=1) if lams else torch.zeros_like(hs)
    h_prev = torch.cat([torch.zeros_like(hs[:, :1]), hs[:, :-1]], dim=1)
    d_exponent = lam * h_prev * s["gate"]  # gradient w.r.t. dt_t * A
    lam_b = torch.einsum("btken,btkn->btke", lam, s["B"])
    ddt = torch.einsum("btken,ken->btke", d_exponent, s["A"]) + lam_b * s["u"]
    dA = torch.einsum("btken,btke->ken", d_exponent, s["dt"])
    dB = torch.einsum("btken,btke->btkn", lam, s["dt"] * s["u"])
    dC = torch.einsum("btken,btke->btkn", hs, dy_s)
    du = _scatter_steps(lam_b * s["dt"], s["steps"]).sum(2)
    ddt, dB, dC = (_scatter_steps(t, s["steps"]) for t in (ddt, dB, dC))
    if delta_softplus:
        raw = project_delta(delta, delta_proj_weight, sd) + (delta_bias.to(sd) if delta_bias is not None else 0)
        ddt = ddt * torch.sigmoid(raw)
    dD = None
    if D is not None:
        du = du + (dy_k * D.to(sd)).sum(2)
        dD = (dy_k * u.to(sd)[:, :, None, :]).sum((0, 1)).to(D.dtype)
    d_bias = None if delta_bias is None else ddt.sum((0, 1)).to(delta_bias.dtype)
    ddelta, d_weight = ddt.to(delta.dtype), None
    if delta_proj_weight is not None:
        ddelta, d_weight = project_delta_backward(ddt, delta, delta_proj_weight)
    return (du.to(u.dtype), ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, d_bias, d_weight)


def selective_scan_naive(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, order=None, merge=True,
                         delta_proj_weight=None):
    """Scalar loop written straight from the recurrence (slow; tests only check the reference against it)."""
    sd = state_dtype(u.dtype)
    Bsz, L, E = u.shape
    K, _, N = A.shape
    if order is None:
        order = identity_orders(K, L)
    if delta_proj_weight is not None:
        W, low = delta_proj_weight.to(sd), delta.to(sd)
        delta = torch.stack([torch.stack([low[:, :, k] @ W[k, e] for e in range(E)], -1) for k in range(K)], 2)
    dt = _step_sizes(delta, delta_bias, delta_softplus, sd)
    u, A, B, C = (t.to(sd) for t in (u, A, B, C))
    y = torch.zeros(Bsz, L, K, E, dtype=sd)
    for b in range(Bsz):
        for k in range(K):
            for e in range(E):
                h = torch.zeros(N, dtype=sd)
                for t in range(L):
                    p = int(order[k, t])
                    h = torch.exp(dt[b, p, k, e] * A[k, e]) * h + dt[b, p, k, e] * B[b, p, k] * u[b, p, e]
                    y[b, p, k, e] = (C[b, p, k] * h).sum()
                    if D is not None:
                        y[b, p, k, e] += D[k, e].to(sd) * u[b, p, e]
    return y.sum(2) if merge else y


# the backend interface of `selective_scan` (same arguments as the reference; order always given)
forward = selective_scan_ref
backward = selective_scan_ref_backward


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
