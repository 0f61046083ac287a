"""Pure-PyTorch reference of the two-pass 2D selective scan of 2DMamba / 2DVMamba (the oracle for every backend).

Shapes (channels-last, like `selective_scan`): u (batch, L, E) with L = H * W pixels stored row-major; delta
(batch, L, K, E); A (K, E, N); B, C (batch, L, K, N); D, delta_bias (K, E); K = 4 directions. Direction k scans the
grid G_k, the image seen from its start corner:
    k = 0: the (H, W) image from the top-left corner          k = 1: its transpose (W, H), from the top-left corner
    k = 2: the (H, W) image from the bottom-right corner      k = 3: the transpose (W, H) from the bottom-right corner
(grid pixel (i, j) is image pixel (i, j), (j, i), (H-1-i, W-1-j), (H-1-j, W-1-i)). On G_k, for every channel e, with
the inputs of the pixel being computed:
    dt = delta + delta_bias, softplus-ed if delta_softplus;  a = exp(dt * A[k, e]);  b = dt * B * u   (N entries)
    g[i, j] = a * g[i, j-1] + b          row pass along G_k's rows      (g[i, -1] = 0)
    h[i, j] = a * h[i-1, j] + g[i, j]    column pass over the row results (h[-1, j] = 0)
    y_k = C . h + D[k, e] * u
so direction 0 scans rows then columns, 1 columns then rows (both from the top-left), 2 and 3 the same from the
bottom-right. Eliminating g gives h = a h_up + a h_left - a a_left h_diag + b: the state of a pixel is a weighted sum
over its whole quadrant (`selective_scan_2pass_naive` runs that form). merge=True returns sum_k y_k (batch, L, E),
else (batch, L, K, E), in u's dtype. The state is float32 (float64 for float64 inputs).
"""
from typing import Optional

import torch
from torch import Tensor

from .scan2d_ref import state_dtype
from .selective_scan_ref import _step_sizes

NUM_DIRECTIONS = 4


def _orient(x: Tensor, k: int, H: int, W: int) -> Tensor:
    """x (batch, L, ...) in storage order -> (batch, *G_k, ...) on direction k's grid."""
    x = x.reshape(x.shape[0], H, W, *x.shape[2:])
    if k >= 2:
        x = x.flip(1, 2)
    return x.transpose(1, 2) if k % 2 else x


def _unorient(x: Tensor, k: int) -> Tensor:
    """Inverse of `_orient`: (batch, *G_k, ...) -> (batch, L, ...)."""
    if k % 2:
        x = x.transpose(1, 2)
    if k >= 2:
        x = x.flip(1, 2)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _forward_pass(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """x[t] = a[t] x[t-1] + b[t] along `dim` (x[-1] = 0)."""
    x, out = torch.zeros_like(b.select(dim, 0)), []
    for t in range(b.shape[dim]):
        x = a.select(dim, t) * x + b.select(dim, t)
        out.append(x)
    return torch.stack(out, dim)


def _reverse_pass(a: Tensor, g: Tensor, dim: int) -> Tensor:
    """The adjoint of `_forward_pass`: lam[t] = g[t] + a[t+1] lam[t+1] along `dim` (lam[T] = 0)."""
    lam, out = torch.zeros_like(g.select(dim, 0)), []
    for t in reversed(range(g.shape[dim])):
        lam = g.select(dim, t) + (a.select(dim, t + 1) * lam if t + 1 < g.shape[dim] else 0)
        out.append(lam)
    return torch.stack(out[::-1], dim)


def _shift(x: Tensor, dim: int) -> Tensor:
    """x moved one step forward along `dim`, zero at index 0 (the previous pixel's value)."""
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, 1)), x.narrow(dim, 0, x.shape[dim] - 1)], dim)


def _direction(u, dt, A, B, C, k, H, W):
    """Direction k on its grid: u, dt (batch, *G, E); B, C (batch, *G, N); gates a and inputs b (batch, *G, E, N)."""
    u_k, dt_k, B_k, C_k = _orient(u, k, H, W), _orient(dt[:, :, k], k, H, W), _orient(B[:, :, k], k, H, W), \
        _orient(C[:, :, k], k, H, W)
    a = torch.exp(dt_k[..., None] * A[k])
    b = (dt_k * u_k)[..., None] * B_k[..., None, :]
    return u_k, dt_k, B_k, C_k, a, b


def _check(u, delta, A, H, W):
    if H * W != u.shape[1] or A.shape[0] != NUM_DIRECTIONS:
        raise ValueError(f"selective_scan_2pass: needs L = H * W and K = {NUM_DIRECTIONS}, got u {tuple(u.shape)}, "
                         f"H={H}, W={W}, A {tuple(A.shape)}")


def selective_scan_2pass_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None, delta_softplus: bool = False, height: int = 1,
                             width: int = 1, merge: bool = True) -> Tensor:
    """Reference two-pass scan, one row / column of pixels at a time; differentiable by autograd."""
    H, W = height, width
    _check(u, delta, A, H, W)
    sd, out_dtype = state_dtype(u.dtype), u.dtype
    batch, L, E = u.shape
    y = torch.zeros(batch, L, NUM_DIRECTIONS, E, dtype=sd, device=u.device)
    if y.numel() == 0:
        return (y.sum(2) if merge else y).to(out_dtype)
    dt = _step_sizes(delta, delta_bias, delta_softplus, sd)
    u, A, B, C = (t.to(sd) for t in (u, A, B, C))
    ys = []
    for k in range(NUM_DIRECTIONS):
        u_k, dt_k, B_k, C_k, a, b = _direction(u, dt, A, B, C, k, H, W)
        h = _forward_pass(a, _forward_pass(a, b, 2), 1)
        ys.append(_unorient(torch.einsum("bijen,bijn->bije", h, C_k), k))
    y = torch.stack(ys, 2)
    if D is not None:
        y = y + D.to(sd) * u[:, :, None, :]
    return (y.sum(2) if merge else y).to(out_dtype)


def selective_scan_2pass_ref_backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge):
    """Gradients of `selective_scan_2pass_ref` written out (the adjoint every backend implements).

    On G_k: lam_h = C dy + a[i+1, j] lam_h[i+1, j] (columns in reverse), lam_g = lam_h + a[i, j+1] lam_g[i, j+1]
    (rows in reverse): the adjoint is again a two-pass scan, from the opposite corner, with the next pixel's gate.
    Then d b = lam_g and d(dt A) = (lam_h h[i-1, j] + lam_g g[i, j-1]) a. Returns (du, ddelta, dA, dB, dC, dD,
    ddelta_bias), each in its input's dtype (None for an absent D / delta_bias).
    """
    H, W = height, width
    sd = state_dtype(u.dtype)
    batch, L, E = u.shape
    K = NUM_DIRECTIONS
    dt = _step_sizes(delta, delta_bias, delta_softplus, sd)
    us, As, Bs, Cs = (t.to(sd) for t in (u, A, B, C))
    dy_k = dy.to(sd)[:, :, None, :].expand(batch, L, K, E) if merge else dy.to(sd)
    du = torch.zeros(batch, L, E, dtype=sd, device=u.device)
    ddt, dA, dB, dC = (torch.zeros(t.shape, dtype=sd, device=u.device) for t in (delta, A, B, C))
    for k in range(K if L > 0 else 0):
        u_k, dt_k, B_k, C_k, a, b = _direction(us, dt, As, Bs, Cs, k, H, W)
        g = _forward_pass(a, b, 2)
        h = _forward_pass(a, g, 1)
        dyk = _orient(dy_k[:, :, k], k, H, W)
        lam_h = _reverse_pass(a, dyk[..., None] * C_k[..., None, :], 1)
        lam_g = _reverse_pass(a, lam_h, 2)
        d_exponent = (lam_h * _shift(h, 1) + lam_g * _shift(g, 2)) * a
        lam_b = torch.einsum("bijen,bijn->bije", lam_g, B_k)
        ddt[:, :, k] = _unorient(torch.einsum("bijen,en->bije", d_exponent, As[k]) + lam_b * u_k, k)
        dA[k] = torch.einsum("bijen,bije->en", d_exponent, dt_k)
        dB[:, :, k] = _unorient(torch.einsum("bijen,bije->bijn", lam_g, dt_k * u_k), k)
        dC[:, :, k] = _unorient(torch.einsum("bijen,bije->bijn", h, dyk), k)
        du += _unorient(lam_b * dt_k, k)
    if delta_softplus:
        raw = delta.to(sd) + (delta_bias.to(sd) if delta_bias is not None else 0)
        ddt = ddt * torch.sigmoid(raw)
    dD = None
    if D is not None:
        du = du + (dy_k * D.to(sd)).sum(2)
        dD = (dy_k * us[:, :, None, :]).sum((0, 1)).to(D.dtype)
    d_bias = None if delta_bias is None else ddt.sum((0, 1)).to(delta_bias.dtype)
    return (du.to(u.dtype), ddt.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, d_bias)


def grid_position(k: int, i: int, j: int, H: int, W: int) -> int:
    """Storage position (row-major in the H x W image) of pixel (i, j) of direction k's grid."""
    y, x = [(i, j), (j, i), (H - 1 - i, W - 1 - j), (H - 1 - j, W - 1 - i)][k]
    return y * W + x


def selective_scan_2pass_naive(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, height=1, width=1,
                               merge=True):
    """Scalar loops over the one-recurrence form h = a h_up + a h_left - a a_left h_diag + b (tests only)."""
    H, W = height, width
    sd = state_dtype(u.dtype)
    batch, L, E = u.shape
    K, _, N = A.shape
    dt = _step_sizes(delta, delta_bias, delta_softplus, sd)
    u, A, B, C = (t.to(sd) for t in (u, A, B, C))
    y = torch.zeros(batch, L, K, E, dtype=sd)
    for b in range(batch):
        for k in range(K):
            rows, cols = (H, W) if k % 2 == 0 else (W, H)
            for e in range(E):
                h = torch.zeros(rows + 1, cols + 1, N, dtype=sd)  # padded: h[i + 1, j + 1] is pixel (i, j)
                for i in range(rows):
                    for j in range(cols):
                        p = grid_position(k, i, j, H, W)
                        gate = torch.exp(dt[b, p, k, e] * A[k, e])  # (N,)
                        a_left = torch.exp(dt[b, grid_position(k, i, j - 1, H, W), k, e] * A[k, e]) if j > 0 \
                            else torch.zeros(N, dtype=sd)
                        h[i + 1, j + 1] = gate * (h[i, j + 1] + h[i + 1, j]) - gate * a_left * h[i, j] \
                            + dt[b, p, k, e] * B[b, p, k] * u[b, p, e]
                        y[b, p, k, e] = (C[b, p, k] * h[i + 1, j + 1]).sum()
                        if D is not None:
                            y[b, p, k, e] += D[k, e].to(sd) * u[b, p, e]
    return y.sum(2) if merge else y


# the backend interface of `selective_scan_2pass` (same arguments as the reference)
forward = selective_scan_2pass_ref
backward = selective_scan_2pass_ref_backward


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
