"""Triton forward and backward kernels of `state_scan` (the "triton" backend); math and shapes as `state_scan_ref`:
u, delta (batch, L, E); A (E, N); B (batch, L, N); delta_bias (E) or None; states h (batch, L, N, E).

One program per (batch item, block of BLOCK_E channels) walks the L steps with a [BLOCK_N, BLOCK_E] state in
registers, softplus and delta_bias fused, and stores every state (the op's output). The backward walks the steps
from the end with the adjoint lam_t = dh_t + exp(dt_{t+1} A) lam_{t+1}, reading the forward's states for h_{t-1}
(no recompute); dA, ddelta_bias are per-program partials and dB (a sum over channels) per channel block, summed on
the host, so results do not depend on timing. fp32 / bf16 / fp16 inputs run with an fp32 state, fp64 in fp64.
CUDA tensors; CPU tensors only under the Triton interpreter (see `scan2d_triton`).
"""
from typing import Optional

import torch

from . import scan2d_triton
from .scan2d_ref import state_dtype

triton = scan2d_triton.triton
MAX_BLOCK_E = 64


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device` (the same conditions as `scan2d_triton`)."""
    return scan2d_triton.unavailable_reason(device)


if triton is not None:
    import triton.language as tl

    from .scan2d_triton import LOG2E, _softplus

    @triton.jit
    def _step(u_ptr, delta_ptr, b_ptr, batch, t, channels, states, bias, L, E, N, DELTA_SOFTPLUS: tl.constexpr,
              STATE: tl.constexpr):
        """Step t's u, raw step size, dt ([BLOCK_E]) and B ([BLOCK_N]) of one batch item."""
        mask_e = channels < E
        seq = (batch * L + t) * E + channels
        u = tl.load(u_ptr + seq, mask=mask_e, other=0.0).to(STATE)
        raw = tl.load(delta_ptr + seq, mask=mask_e, other=0.0).to(STATE) + bias
        if DELTA_SOFTPLUS:
            dt = _softplus(raw)
        else:
            dt = raw
        b = tl.load(b_ptr + (batch * L + t) * N + states, mask=states < N, other=0.0).to(STATE)
        return u, raw, dt, b

    @triton.jit
    def _state_scan_fwd_kernel(u_ptr, delta_ptr, a_ptr, b_ptr, bias_ptr, h_ptr, L, E, N, HAS_BIAS: tl.constexpr,
                               DELTA_SOFTPLUS: tl.constexpr, STATE: tl.constexpr, BLOCK_E: tl.constexpr,
                               BLOCK_N: tl.constexpr):
        block, batch = tl.program_id(0), tl.program_id(1)
        channels = block * BLOCK_E + tl.arange(0, BLOCK_E)
        states = tl.arange(0, BLOCK_N)
        mask = (states < N)[:, None] & (channels < E)[None, :]
        A2 = tl.load(a_ptr + channels[None, :] * N + states[:, None], mask=mask, other=0.0).to(STATE) * LOG2E
        if HAS_BIAS:
            bias = tl.load(bias_ptr + channels, mask=channels < E, other=0.0).to(STATE)
        else:
            bias = tl.zeros([BLOCK_E], STATE)
        h = tl.zeros([BLOCK_N, BLOCK_E], STATE)
        for t in range(0, L):
            u, raw, dt, b = _step(u_ptr, delta_ptr, b_ptr, batch, t, channels, states, bias, L, E, N, DELTA_SOFTPLUS,
                                  STATE)
            h = tl.exp2(dt[None, :] * A2) * h + b[:, None] * (dt * u)[None, :]
            tl.store(h_ptr + ((batch * L + t) * N + states[:, None]) * E + channels[None, :], h, mask=mask)

    @triton.jit
    def _state_scan_bwd_kernel(dh_ptr, u_ptr, delta_ptr, a_ptr, b_ptr, bias_ptr, h_ptr, du_ptr, ddelta_ptr, da_ptr,
                               db_ptr, dbias_ptr, batches, L, E, N, HAS_BIAS: tl.constexpr,
                               DELTA_SOFTPLUS: tl.constexpr, STATE: tl.constexpr, BLOCK_E: tl.constexpr,
                               BLOCK_N: tl.constexpr):
        """du, ddelta (batch, L, E); partials dA (batch, N, E), ddelta_bias (batch, E), dB (blocks, batch, L, N)."""
        block, batch = tl.program_id(0), tl.program_id(1)
        channels = block * BLOCK_E + tl.arange(0, BLOCK_E)
        states = tl.arange(0, BLOCK_N)
        mask_e = channels < E
        mask = (states < N)[:, None] & mask_e[None, :]
        A = tl.load(a_ptr + channels[None, :] * N + states[:, None], mask=mask, other=0.0).to(STATE)
        A2 = A * LOG2E
        if HAS_BIAS:
            bias = tl.load(bias_ptr + channels, mask=mask_e, other=0.0).to(STATE)
        else:
            bias = tl.zeros([BLOCK_E], STATE)
        lam = tl.zeros([BLOCK_N, BLOCK_E], STATE)
        next_gate = tl.zeros([BLOCK_N, BLOCK_E], STATE)
        dA = tl.zeros([BLOCK_N, BLOCK_E], STATE)
        dbias = tl.zeros([BLOCK_E], STATE)
        tile = states[:, None] * E + channels[None, :]
        for i in range(0, L):
            t = L - 1 - i
            u, raw, dt, b = _step(u_ptr, delta_ptr, b_ptr, batch, t, channels, states, bias, L, E, N, DELTA_SOFTPLUS,
                                  STATE)
            lam = tl.load(dh_ptr + (batch * L + t) * N * E + tile, mask=mask, other=0.0).to(STATE) + next_gate * lam
            gate = tl.exp2(dt[None, :] * A2)
            h_prev = tl.load(h_ptr + (batch * L + t - 1) * N * E + tile, mask=mask & (t > 0), other=0.0).to(STATE)
            d_exponent = lam * h_prev * gate
            lam_b = tl.sum(lam * b[:, None], axis=0)
            ddt = tl.sum(d_exponent * A, axis=0) + lam_b * u
            if DELTA_SOFTPLUS:
                ddt = ddt * tl.where(raw > 20.0, 1.0, tl.sigmoid(raw))
            dA += d_exponent * dt[None, :]
            dbias += ddt
            seq = (batch * L + t) * E + channels
            tl.store(du_ptr + seq, lam_b * dt, mask=mask_e)
            tl.store(ddelta_ptr + seq, ddt, mask=mask_e)
            tl.store(db_ptr + ((block * batches + batch) * L + t) * N + states, tl.sum(lam * (dt * u)[None, :], axis=1),
                     mask=states < N)
            next_gate = gate
        tl.store(da_ptr + batch * N * E + tile, dA, mask=mask)
        if HAS_BIAS:
            tl.store(dbias_ptr + batch * E + channels, dbias, mask=mask_e)


def _launch_config(u: torch.Tensor, A: torch.Tensor):
    """(grid, meta-parameters): one program per (channel block, batch item)."""
    (batch, L, E), N = u.shape, A.shape[1]
    block_e = min(MAX_BLOCK_E, triton.next_power_of_2(max(E, 1)))
    state = tl.float64 if state_dtype(u.dtype) == torch.float64 else tl.float32
    return (triton.cdiv(E, block_e), batch), dict(STATE=state, BLOCK_E=block_e,
                                                  BLOCK_N=triton.next_power_of_2(max(N, 1)))


def forward(u, delta, A, B, delta_bias, delta_softplus):
    """States h (batch, L, N, E) in the state dtype."""
    (batch, L, E), N = u.shape, A.shape[1]
    h = torch.empty(batch, L, N, E, dtype=state_dtype(u.dtype), device=u.device)
    if h.numel() == 0:
        return h
    grid, meta = _launch_config(u, A)
    _state_scan_fwd_kernel[grid](u, delta, A, B, delta_bias if delta_bias is not None else A, h, L, E, N,
                                 HAS_BIAS=delta_bias is not None, DELTA_SOFTPLUS=bool(delta_softplus), **meta)
    return h


def backward(dh, u, delta, A, B, delta_bias, delta_softplus, h):
    """(du, ddelta, dA, dB, ddelta_bias) in the inputs' dtypes (None for an absent delta_bias)."""
    (batch, L, E), N = u.shape, A.shape[1]
    sd, device = state_dtype(u.dtype), u.device
    grid, meta = _launch_config(u, A)
    du, ddelta = (torch.zeros(t.shape, dtype=sd, device=device) for t in (u, delta))
    dA = torch.zeros(batch, N, E, dtype=sd, device=device)
    dB = torch.zeros(grid[0], batch, L, N, dtype=sd, device=device)
    d_bias = torch.zeros(batch, E, dtype=sd, device=device)
    if u.numel() > 0 and N > 0:
        _state_scan_bwd_kernel[grid](dh, u, delta, A, B, delta_bias if delta_bias is not None else A, h, du, ddelta,
                                     dA, dB, d_bias, batch, L, E, N, HAS_BIAS=delta_bias is not None,
                                     DELTA_SOFTPLUS=bool(delta_softplus), **meta)
    d_bias = None if delta_bias is None else d_bias.sum(0).to(delta_bias.dtype)
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).t().to(A.dtype), dB.sum(0).to(B.dtype), d_bias)
