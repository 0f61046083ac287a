"""Pure-PyTorch reference of the Mamba2D 2D selective scan (the oracle for every backend).

Shapes (channels-last): u, delta_t, delta_l (B, H, W, E); A_t, A_l (E, N); B_t, B_l, C (B, H, W, N); D (E,).

For every pixel p = (i, j) and channel e, with gates and inputs of the pixel being computed:
    dT = softplus(delta_t) (if delta_softplus), aT = exp(dT * A_t), xT = dT * B_t * u   (same for L)
    h(i, j) = wL * (aL * h(i, j-1) + xL) + wT * (aT * h(i-1, j) + xT)
    wL, wT = (1, 0) on row 0 (origin included), (0, 1) on column 0 below it, (1/2, 1/2) elsewhere
    y(i, j) = sum_n C * h + D * u
`reverse=True` scans from the bottom-right corner: the same as flipping every per-pixel input
along H and W, scanning, and flipping y back. The state is float32 (float64 for float64 inputs).
Inputs the recurrence never reads (delta_l, B_l in column 0 below row 0; delta_t, B_t on row 0) may hold anything,
NaN included, and a gate exp(delta * A) of A = -inf is 0 with zero gradients; H = 0 or W = 0 gives an empty y.
"""
import torch
import torch.nn.functional as F


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence runs in for inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def in_state_dtype(dtype: torch.dtype, *tensors):
    """tensors (None kept) in `dtype`, contiguous, as a native kernel reads them; those already so as they are (~2 us
    per tensor less than the no-op conversions). The caller keeps them referenced until the kernel returns."""
    return [t if t is None or (t.dtype == dtype and t.is_contiguous()) else t.to(dtype).contiguous() for t in tensors]


def direction_weights(H: int, W: int, device=None, dtype=torch.float32):
    """(wL, wT), each (H, W): the weights of the left and top one-step updates at each pixel."""
    i = torch.arange(H, device=device).view(H, 1)
    j = torch.arange(W, device=device).view(1, W)
    interior = torch.full((H, W), 0.5, device=device, dtype=dtype)
    w_l = torch.where(i == 0, 1.0, torch.where(j == 0, 0.0, interior))
    w_t = torch.where(i == 0, 0.0, torch.where(j == 0, 1.0, interior))
    return w_l, w_t


def _skew(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, ...) -> (B, H, H + W - 1, ...): entry (i, d) holds pixel (i, d - i), zero off the image."""
    B, H, W = x.shape[:3]
    i = torch.arange(H, device=x.device).view(H, 1)
    j = torch.arange(H + W - 1, device=x.device).view(1, -1) - i  # column of pixel (i, d)
    valid = (j >= 0) & (j < W)
    idx = j.clamp(0, W - 1).view(1, H, -1, *([1] * (x.dim() - 3))).expand(B, H, H + W - 1, *x.shape[3:])
    mask = valid.view(1, H, -1, *([1] * (x.dim() - 3)))
    return torch.where(mask, torch.gather(x, 2, idx), 0)  # where, not a product: 0 * NaN would be NaN


def _unskew(xs: torch.Tensor, W: int) -> torch.Tensor:
    """Inverse of `_skew`: (B, H, H + W - 1, ...) -> (B, H, W, ...), pixel (i, j) read from (i, i + j)."""
    B, H = xs.shape[:2]
    d = torch.arange(W, device=xs.device).view(1, W) + torch.arange(H, device=xs.device).view(H, 1)
    idx = d.view(1, H, W, *([1] * (xs.dim() - 3))).expand(B, H, W, *xs.shape[3:])
    return torch.gather(xs, 2, idx)


def _prepare(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, delta_softplus):
    """Cast to the state dtype, apply softplus, zero the inputs the recurrence never reads (their gates too) and skew
    every per-pixel input (column d = anti-diagonal d)."""
    sd = state_dtype(u.dtype)
    u, delta_t, delta_l, B_t, B_l, C, A_t, A_l = (t.to(sd) for t in (u, delta_t, delta_l, B_t, B_l, C, A_t, A_l))
    if delta_softplus:
        delta_t, delta_l = F.softplus(delta_t), F.softplus(delta_l)
    Bsz, H, W, _ = u.shape
    w_l, w_t = direction_weights(H, W, device=u.device, dtype=sd)
    used_t, used_l = (w_t != 0)[..., None], (w_l != 0)[..., None]  # (H, W, 1)
    delta_t, B_t = torch.where(used_t, delta_t, 0), torch.where(used_t, B_t, 0)
    delta_l, B_l = torch.where(used_l, delta_l, 0), torch.where(used_l, B_l, 0)
    s = dict(u=_skew(u), dt=_skew(delta_t), dl=_skew(delta_l), bt=_skew(B_t), bl=_skew(B_l),  # (B, H, L, E|N)
             wl=_skew(w_l.expand(Bsz, H, W))[..., None, None], wt=_skew(w_t.expand(Bsz, H, W))[..., None, None],
             used_t=used_t, used_l=used_l)
    s["a_t"] = torch.where(s["wt"] != 0, torch.exp(s["dt"][..., None] * A_t), 0)  # (B, H, L, E, N)
    s["a_l"] = torch.where(s["wl"] != 0, torch.exp(s["dl"][..., None] * A_l), 0)
    s["x_t"] = s["dt"][..., None] * s["bt"][..., None, :] * s["u"][..., None]
    s["x_l"] = s["dl"][..., None] * s["bl"][..., None, :] * s["u"][..., None]
    return s


def _shift_rows_down(x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i - 1 of x (zeros in row 0); x is (B, H, ...)."""
    return F.pad(x, [0, 0] * (x.dim() - 2) + [1, 0])[:, :-1]


def _shift_rows_up(x: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row i + 1 of x (zeros in the last row); x is (B, H, ...)."""
    return F.pad(x, [0, 0] * (x.dim() - 2) + [0, 1])[:, 1:]


def _skewed_states(s):
    """All states h, skewed: (B, H, L, E, N). Diagonal d uses h(i, j-1) = (i, d-1) and h(i-1, j) = (i-1, d-1)."""
    h = torch.zeros_like(s["a_t"][:, :, 0])
    states = []
    for d in range(s["a_t"].shape[2]):
        h = (s["wl"][:, :, d] * (s["a_l"][:, :, d] * h + s["x_l"][:, :, d])
             + s["wt"][:, :, d] * (s["a_t"][:, :, d] * _shift_rows_down(h) + s["x_t"][:, :, d]))
        states.append(h)
    return torch.stack(states, dim=2)


def selective_scan_2d_ref(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D=None, delta_softplus=True, reverse=False):
    """Reference 2D selective scan, vectorised over anti-diagonals; differentiable by autograd. Returns y (B, H, W, E)."""
    if reverse:
        flip = lambda t: t.flip(1, 2)  # noqa: E731
        y = selective_scan_2d_ref(*map(flip, (u, delta_t, delta_l)), A_t, A_l, *map(flip, (B_t, B_l, C)), D, delta_softplus)
        return y.flip(1, 2)
    if u.shape[1] == 0 or u.shape[2] == 0:  # no pixels: an empty y (still connected to u for autograd)
        return u * 0
    s = _prepare(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, delta_softplus)
    hs = _unskew(_skewed_states(s), u.shape[2])  # (B, H, W, E, N)
    y = torch.einsum("bhwen,bhwn->bhwe", hs, C.to(hs.dtype))
    if D is not None:
        y = y + D.to(hs.dtype) * u.to(hs.dtype)
    return y.to(u.dtype)


def selective_scan_2d_ref_backward(dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D=None, delta_softplus=True,
                                   reverse=False):
    """Gradients of `selective_scan_2d_ref` written out (the adjoint recurrence every backend implements).

    The adjoint runs the scan backwards: lam(p) = dy(p) C(p) + wL aL lam(right) + wT aT lam(down), with the
    weights and gates of the right / lower pixel. Returns (du, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD),
    each in its input's dtype (dD None when D is None).
    """
    if reverse:
        flip = lambda t: t.flip(1, 2)  # noqa: E731
        g = selective_scan_2d_ref_backward(flip(dy), *map(flip, (u, delta_t, delta_l)), A_t, A_l,
                                           *map(flip, (B_t, B_l, C)), D, delta_softplus)
        return (*map(flip, g[:3]), g[3], g[4], *map(flip, g[5:8]), g[8])
    W = u.shape[2]
    if u.shape[1] == 0 or W == 0:  # no pixels, nothing depends on the inputs
        return (*(torch.zeros_like(t) for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)),
                None if D is None else torch.zeros_like(D))
    s = _prepare(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, delta_softplus)
    hs = _skewed_states(s)
    sd = hs.dtype
    dys = _skew(dy.to(sd))  # (B, H, L, E)
    g = dys[..., None] * _skew(C.to(sd))[..., None, :]  # direct state gradient, (B, H, L, E, N)
    lam = torch.zeros_like(hs[:, :, 0])
    lams = []
    for d in reversed(range(hs.shape[2])):
        if d + 1 < hs.shape[2]:
            right = s["wl"][:, :, d + 1] * s["a_l"][:, :, d + 1] * lam  # pixel (i, j+1) is (i, d+1)
            down = _shift_rows_up(s["wt"][:, :, d + 1] * s["a_t"][:, :, d + 1] * lam)  # (i+1, j) is (i+1, d+1)
            lam = g[:, :, d] + right + down
        else:
            lam = g[:, :, d]
        lams.append(lam)
    lam = torch.stack(lams[::-1], dim=2)
    h_left = F.pad(hs, (0, 0, 0, 0, 1, 0))[:, :, :-1]  # (i, d-1)
    h_up = _shift_rows_down(h_left)  # (i-1, d-1)
    dx_l, dx_t = s["wl"] * lam, s["wt"] * lam
    da_l, da_t = dx_l * h_left * s["a_l"], dx_t * h_up * s["a_t"]  # gradient w.r.t. the exponent dl * A_l
    # a closed gate (a = 0, e.g. A = -inf) passes no gradient to delta: 0 * A, not NaN
    ddl = torch.where(s["a_l"] == 0, 0, da_l * A_l.to(sd)).sum(-1) + (dx_l * s["bl"][..., None, :]).sum(-1) * s["u"]
    ddt = torch.where(s["a_t"] == 0, 0, da_t * A_t.to(sd)).sum(-1) + (dx_t * s["bt"][..., None, :]).sum(-1) * s["u"]
    dA_l = torch.einsum("bhlen,bhle->en", da_l, s["dl"])
    dA_t = torch.einsum("bhlen,bhle->en", da_t, s["dt"])
    dB_l = torch.einsum("bhlen,bhle->bhln", dx_l, s["dl"] * s["u"])
    dB_t = torch.einsum("bhlen,bhle->bhln", dx_t, s["dt"] * s["u"])
    du = (dx_l * s["bl"][..., None, :]).sum(-1) * s["dl"] + (dx_t * s["bt"][..., None, :]).sum(-1) * s["dt"]
    dC = torch.einsum("bhlen,bhle->bhln", hs, dys)
    du, ddt, ddl, dB_t, dB_l, dC = (_unskew(t, W) for t in (du, ddt, ddl, dB_t, dB_l, dC))
    if D is not None:
        du = du + dy.to(sd) * D.to(sd)
        dD = (dy.to(sd) * u.to(sd)).sum((0, 1, 2)).to(D.dtype)
    else:
        dD = None
    if delta_softplus:
        ddt = ddt * torch.sigmoid(delta_t.to(sd))
        ddl = ddl * torch.sigmoid(delta_l.to(sd))
    ddt, dB_t = torch.where(s["used_t"], ddt, 0), torch.where(s["used_t"], dB_t, 0)  # unread inputs: zero gradient
    ddl, dB_l = torch.where(s["used_l"], ddl, 0), torch.where(s["used_l"], dB_l, 0)
    return (du.to(u.dtype), ddt.to(delta_t.dtype), ddl.to(delta_l.dtype), dA_t.to(A_t.dtype), dA_l.to(A_l.dtype),
            dB_t.to(B_t.dtype), dB_l.to(B_l.dtype), dC.to(C.dtype), dD)


def selective_scan_2d_naive(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D=None, delta_softplus=True, reverse=False):
    """Per-pixel loop written straight from the recurrence (slow; tests only check the reference against it)."""
    if reverse:
        flip = lambda t: t.flip(1, 2)  # noqa: E731
        y = selective_scan_2d_naive(*map(flip, (u, delta_t, delta_l)), A_t, A_l, *map(flip, (B_t, B_l, C)), D, delta_softplus)
        return y.flip(1, 2)
    sd = state_dtype(u.dtype)
    u, delta_t, delta_l, B_t, B_l, C, A_t, A_l = (t.to(sd) for t in (u, delta_t, delta_l, B_t, B_l, C, A_t, A_l))
    if delta_softplus:
        delta_t, delta_l = F.softplus(delta_t), F.softplus(delta_l)
    Bsz, H, W, E = u.shape
    h = [[None] * W for _ in range(H)]
    y = torch.zeros_like(u)
    for i in range(H):
        for j in range(W):
            def step(delta, A, Bm, prev):
                upd = delta[:, i, j, :, None] * Bm[:, i, j, None, :] * u[:, i, j, :, None]
                return upd if prev is None else torch.exp(delta[:, i, j, :, None] * A) * prev + upd
            if i == 0:
                h[i][j] = step(delta_l, A_l, B_l, h[i][j - 1] if j > 0 else None)
            elif j == 0:
                h[i][j] = step(delta_t, A_t, B_t, h[i - 1][j])
            else:
                h[i][j] = 0.5 * (step(delta_l, A_l, B_l, h[i][j - 1]) + step(delta_t, A_t, B_t, h[i - 1][j]))
            y[:, i, j] = (h[i][j] * C[:, i, j, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(sd) * u
    return y


# the backend interface of `selective_scan_2d` (same arguments as the reference, D may be None)
forward = selective_scan_2d_ref
backward = selective_scan_2d_ref_backward


def unavailable_reason(device: torch.device):
    """The reference runs on every device."""
    return None
