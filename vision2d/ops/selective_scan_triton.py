"""Triton forward and backward kernels of the 1D selective scan with K directions (the "triton" backend).

Same arguments and math as `selective_scan_ref` (u (batch, L, E); delta (batch, L, K, E); A (K, E, N); B, C
(batch, L, K, N); D, delta_bias (K, E) or None; order (K, L)). Inputs arrive contiguous. With delta_proj_weight
(K, E, R) the low-rank delta (batch, L, K, R) is projected first (`project_delta`, one batched matmul in the state
dtype) and the kernels read the projected delta; its gradient maps back through `project_delta_backward`.

Design. One program per (block of BLOCK_E channels, batch item) runs the K directions one after the other. A
direction walks its scan order in chunks of BLOCK_L steps: the chunk's positions are read from `order` and its
inputs gathered from storage order (no cross-scan copies); the chunk is the linear recurrence h_t = a_t h_{t-1} + x_t
on a [BLOCK_L, BLOCK_E, BLOCK_N] register tile, solved by `tl.associative_scan` along the steps and continued from the
state the previous chunk left (a [BLOCK_E, BLOCK_N] carry). softplus, delta_bias, the gates, the C read-out and the D
skip are fused. With merge=True the directions add into y one after another in the same program (a barrier between
directions), so merging needs no atomics and no (batch, L, K, E) intermediate.
The backward stores the state entering every chunk (a first forward pass), then walks the chunks from the end,
recomputing a chunk's states and solving the adjoint lam_t = C_t dy_t + a_{t+1} lam_{t+1} by a reverse associative
scan continued from the next chunk (carry a lam of its first step). The gradient w.r.t. the exponent dt A is
lam a h_{t-1} = lam (h_t - x_t). du adds over directions in the program; dA, dD, ddelta_bias are per-program partials
summed on the host; dB and dC (sums over E) are accumulated with `tl.atomic_add` in the state dtype (so their
summation order, and last bits, vary from run to run).

Dtypes. fp32, bf16 and fp16 inputs run with an fp32 state (y and du accumulate in fp32, cast once); fp64 in fp64.

Memory. The forward allocates y only; the backward a scratch of one [BLOCK_E, BLOCK_N] state per chunk and program
(1 / BLOCK_L of the full state of one direction) besides the gradients.

Devices. CUDA tensors; CPU tensors only under the Triton interpreter (see `scan2d_triton`, whose jit helpers these
kernels share).
"""
from typing import Optional

import torch

from . import scan2d_triton
from .scan2d_ref import state_dtype
from .selective_scan_ref import (ORDER_ERROR, check_orders, identity_orders, periodic_inputs, project_delta,
                                 project_delta_backward)

triton = scan2d_triton.triton
TILE = 2048  # max elements of a [BLOCK_L, BLOCK_E, BLOCK_N] tile
MAX_BLOCK_E = 64


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device` (the same conditions as `scan2d_triton`)."""
    return scan2d_triton.unavailable_reason(device)


if triton is not None:
    import triton.language as tl

    from .scan2d_triton import LOG2E, _combine_adjoint, _combine_rows, _softplus

    @triton.jit
    def _chunk(u_ptr, delta_ptr, b_ptr, order_ptr, bias, A2, k, t0, batch, rows, channels, states, L, K, E, N,
               DELTA_SOFTPLUS: tl.constexpr, STATE: tl.constexpr):
        """Steps t0 + rows of direction k, gathered at their positions: (offsets of the [BLOCK_L, BLOCK_E] tile in a
        (batch, L, E) and a (batch, L, K, E) tensor and of the [BLOCK_L, BLOCK_N] tile in a (batch, L, K, N) tensor,
        their masks, u, the raw step size, dt, the gates a and the inputs x = dt u B ([BLOCK_L, BLOCK_E, BLOCK_N]; a = 1
        and x = 0 past the end, so the last row holds the chunk's final state))."""
        t = t0 + rows
        inside = t < L
        p = tl.load(order_ptr + k * L + t, mask=inside, other=0)
        p = tl.minimum(tl.maximum(p, 0), L - 1)  # in bounds even for an invalid order (reported asynchronously)
        position = batch * L + p
        mask_e = inside[:, None] & (channels < E)[None, :]
        mask_n = inside[:, None] & (states < N)[None, :]
        seq = position[:, None] * E + channels[None, :]
        dirs = (position * K + k)[:, None] * E + channels[None, :]
        bcs = (position * K + k)[:, None] * N + states[None, :]
        u = tl.load(u_ptr + seq, mask=mask_e, other=0.0).to(STATE)
        raw = tl.load(delta_ptr + dirs, mask=mask_e, other=0.0).to(STATE) + bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(raw)
        else:
            dt = raw
        b = tl.load(b_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
        a = tl.where(inside[:, None, None], tl.exp2(dt[:, :, None] * A2[None, :, :]), 1.0)
        x = (dt * u)[:, :, None] * b[:, None, :]
        return seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x

    @triton.jit
    def _chunk_states(a, x, h_in):
        """States of a chunk [BLOCK_L, BLOCK_E, BLOCK_N] continued from h_in [BLOCK_E, BLOCK_N]."""
        a_cum, h = tl.associative_scan((a, x), 0, _combine_rows)
        return h + a_cum * h_in[None, :, :]

    @triton.jit
    def _row(tile, rows, r):
        """Row r of a [BLOCK_L, BLOCK_E, BLOCK_N] tile."""
        return tl.sum(tl.where((rows == r)[:, None, None], tile, 0.0), axis=0)

    @triton.jit
    def _direction_params(A_ptr, d_ptr, bias_ptr, k, channels, states, E, N, HAS_D: tl.constexpr,
                          HAS_BIAS: tl.constexpr, STATE: tl.constexpr):
        """A [BLOCK_E, BLOCK_N], D and delta_bias [BLOCK_E] of direction k (zeros where absent or masked)."""
        mask_e = channels < E
        a_offsets = (k * E + channels)[:, None] * N + states[None, :]
        A = tl.load(A_ptr + a_offsets, mask=mask_e[:, None] & (states < N)[None, :], other=0.0).to(STATE)
        d = tl.zeros(channels.shape, dtype=STATE)
        bias = tl.zeros(channels.shape, dtype=STATE)
        if HAS_D:
            d = tl.load(d_ptr + k * E + channels, mask=mask_e, other=0.0).to(STATE)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * E + channels, mask=mask_e, other=0.0).to(STATE)
        return A, d, bias, a_offsets

    @triton.jit
    def _selective_scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, order_ptr, y_ptr, L, K, E,
                                   N, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
                                   MERGE: tl.constexpr, STATE: tl.constexpr, BLOCK_L: tl.constexpr,
                                   BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """y (batch, L, E) if MERGE else (batch, L, K, E), in STATE; grid (cdiv(E, BLOCK_E), batch)."""
        channels = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        batch = tl.program_id(1).to(tl.int64)
        rows = tl.arange(0, BLOCK_L)
        states = tl.arange(0, BLOCK_N)
        for k in range(0, K):
            A, d, bias, a_offsets = _direction_params(A_ptr, d_ptr, bias_ptr, k, channels, states, E, N, HAS_D,
                                                      HAS_BIAS, STATE)
            A2 = A * LOG2E
            h_in = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
            for t0 in range(0, L, BLOCK_L):
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _chunk(
                    u_ptr, delta_ptr, b_ptr, order_ptr, bias, A2, k, t0, batch, rows, channels, states, L, K, E, N,
                    DELTA_SOFTPLUS, STATE)
                h = _chunk_states(a, x, h_in)
                h_in = _row(h, rows, BLOCK_L - 1)
                c = tl.load(c_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
                y = tl.sum(h * c[:, None, :], axis=2) + d[None, :] * u
                if MERGE:
                    if k > 0:
                        y += tl.load(y_ptr + seq, mask=mask_e, other=0.0)
                    tl.store(y_ptr + seq, y, mask=mask_e)
                else:
                    tl.store(y_ptr + dirs, y, mask=mask_e)
            tl.debug_barrier()  # the next direction reads what this one added to y

    @triton.jit
    def _selective_scan_bwd_kernel(dy_ptr, u_ptr, delta_ptr, A_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, order_ptr,
                                   du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, scratch_ptr,
                                   L, K, E, N, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                                   DELTA_SOFTPLUS: tl.constexpr, MERGE: tl.constexpr, STATE: tl.constexpr,
                                   BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """All gradients; grid (cdiv(E, BLOCK_E), batch).

        du (batch, L, E) in STATE; ddelta (batch, L, K, E) in delta's dtype; dA (batch, K, E, N) and dD, dbias
        (batch, K, E) per-batch partials; dB, dC (batch, L, K, N) zero-initialised accumulators (atomics over
        channel blocks); scratch: per program cdiv(L, BLOCK_L) states [BLOCK_E, BLOCK_N], the one entering each chunk.
        """
        pid_e = tl.program_id(0)
        batch = tl.program_id(1).to(tl.int64)
        channels = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        rows = tl.arange(0, BLOCK_L)
        states = tl.arange(0, BLOCK_N)
        num_chunks = tl.cdiv(L, BLOCK_L)
        program = batch * tl.num_programs(0) + pid_e
        slot = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + states[None, :]
        scratch = scratch_ptr + program * num_chunks * (BLOCK_E * BLOCK_N) + slot
        for k in range(0, K):
            A, d, bias, a_offsets = _direction_params(A_ptr, d_ptr, bias_ptr, k, channels, states, E, N, HAS_D,
                                                      HAS_BIAS, STATE)
            A2 = A * LOG2E
            # pass 1: the state entering every chunk
            h_in = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
            for chunk in range(0, num_chunks):
                tl.store(scratch + chunk * (BLOCK_E * BLOCK_N), h_in)
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _chunk(
                    u_ptr, delta_ptr, b_ptr, order_ptr, bias, A2, k, chunk * BLOCK_L, batch, rows, channels, states, L,
                    K, E, N, DELTA_SOFTPLUS, STATE)
                h_in = _row(_chunk_states(a, x, h_in), rows, BLOCK_L - 1)
            tl.debug_barrier()
            # pass 2: chunks from the end; recompute a chunk's states, then its adjoint
            lam_carry = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)  # a lam of the next chunk's first step
            dA = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
            dD = tl.zeros([BLOCK_E], dtype=STATE)
            dbias = tl.zeros([BLOCK_E], dtype=STATE)
            for chunk_from_end in range(0, num_chunks):
                chunk = num_chunks - 1 - chunk_from_end
                t0 = chunk * BLOCK_L
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _chunk(
                    u_ptr, delta_ptr, b_ptr, order_ptr, bias, A2, k, t0, batch, rows, channels, states, L, K, E, N,
                    DELTA_SOFTPLUS, STATE)
                h = _chunk_states(a, x, tl.load(scratch + chunk * (BLOCK_E * BLOCK_N)))
                b = tl.load(b_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
                c = tl.load(c_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
                if MERGE:
                    dy = tl.load(dy_ptr + seq, mask=mask_e, other=0.0).to(STATE)
                else:
                    dy = tl.load(dy_ptr + dirs, mask=mask_e, other=0.0).to(STATE)
                last = tl.minimum(BLOCK_L, L - t0) - 1
                g = dy[:, :, None] * c[:, None, :] + tl.where((rows == last)[:, None, None], lam_carry[None, :, :],
                                                              0.0)
                ones, gates, lam = tl.associative_scan((tl.full(g.shape, 1.0, STATE), a, g), 0, _combine_adjoint,
                                                reverse=True)
                lam_carry = _row(a * lam, rows, 0)
                d_exponent = lam * (h - x)  # lam a h_{t-1}: the gradient w.r.t. dt A
                lam_b = tl.sum(lam * b[:, None, :], axis=2)
                ddelta = tl.sum(d_exponent * A[None, :, :], axis=2) + u * lam_b
                if DELTA_SOFTPLUS:
                    ddelta = ddelta * tl.sigmoid(raw)
                du = dt * lam_b + d[None, :] * dy
                if k > 0:
                    du += tl.load(du_ptr + seq, mask=mask_e, other=0.0)
                tl.store(du_ptr + seq, du, mask=mask_e)
                tl.store(ddelta_ptr + dirs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask_e)
                tl.atomic_add(dB_ptr + bcs, tl.sum(lam * (dt * u)[:, :, None], axis=1), mask=mask_n, sem="relaxed")
                tl.atomic_add(dC_ptr + bcs, tl.sum(h * dy[:, :, None], axis=1), mask=mask_n, sem="relaxed")
                dA += tl.sum(d_exponent * dt[:, :, None], axis=0)
                dD += tl.sum(dy * u, axis=0)
                dbias += tl.sum(ddelta, axis=0)
            partial = batch * K * E + k * E + channels
            tl.store(dA_ptr + batch * K * E * N + a_offsets, dA, mask=(channels < E)[:, None] & (states < N)[None, :])
            tl.store(dD_ptr + partial, dD, mask=channels < E)
            tl.store(dbias_ptr + partial, dbias, mask=channels < E)
            tl.debug_barrier()  # the next direction reads du and reuses the scratch


def _block_sizes(L: int, E: int, N: int):
    """(BLOCK_L, BLOCK_E, BLOCK_N): all states, up to MAX_BLOCK_E channels, as many steps as fit in TILE."""
    block_n = triton.next_power_of_2(max(N, 1))
    block_e = max(1, min(triton.next_power_of_2(max(E, 1)), MAX_BLOCK_E, TILE // (16 * block_n)))
    block_l = max(1, min(triton.next_power_of_2(max(L, 1)), TILE // (block_e * block_n)))
    return block_l, block_e, block_n


def _launch_options(u, L, E, N):
    block_l, block_e, block_n = _block_sizes(L, E, N)
    state = tl.float64 if state_dtype(u.dtype) == torch.float64 else tl.float32
    return dict(STATE=state, BLOCK_L=block_l, BLOCK_E=block_e, BLOCK_N=block_n,
                num_warps=scan2d_triton._num_warps(block_l * block_e * block_n))


def _check_orders(order):
    """ValueError unless the rows of `order` are permutations; on CUDA a device-side assertion instead, which does
    not wait for the GPU (the error surfaces at a later synchronisation; the kernels clamp positions meanwhile)."""
    if order.is_cuda:
        K, L = order.shape
        in_order = order.sort(dim=1).values == identity_orders(K, L, order.device)
        torch._assert_async(in_order.all(), ORDER_ERROR)
    else:
        check_orders(order)


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge, delta_proj_weight=None):
    """y in u's dtype, (batch, L, E) if `merge` else (batch, L, K, E)."""
    _check_orders(order)
    u, delta, B, C = periodic_inputs(order.shape[1], u, delta, B, C)
    (batch, L, E), (K, _, N) = u.shape, A.shape
    if delta_proj_weight is not None:
        delta = project_delta(delta, delta_proj_weight, state_dtype(u.dtype))
    y = u.new_zeros((batch, L, E) if merge else (batch, L, K, E), dtype=state_dtype(u.dtype))
    if y.numel() > 0 and K > 0:
        options = _launch_options(u, L, E, N)
        grid = (triton.cdiv(E, options["BLOCK_E"]), batch)
        _selective_scan_fwd_kernel[grid](u, delta, A, B, C, D if D is not None else A,
                                         delta_bias if delta_bias is not None else A, order, y, L, K, E, N,
                                         HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                                         DELTA_SOFTPLUS=bool(delta_softplus), MERGE=bool(merge), **options)
    return y.to(u.dtype)


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge, delta_proj_weight=None):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias, ddelta_proj_weight), each in its input's dtype (None for an absent
    D / delta_bias / delta_proj_weight)."""
    (batch, L, E), (K, _, N) = u.shape, A.shape
    state = state_dtype(u.dtype)
    low_rank = delta
    if delta_proj_weight is not None:
        delta = project_delta(low_rank, delta_proj_weight, state)
    du = u.new_zeros(u.shape, dtype=state)
    ddelta = torch.zeros_like(delta)
    dA = u.new_zeros((batch, K, E, N), dtype=state)
    dD, dbias = (u.new_zeros((batch, K, E), dtype=state) for _ in range(2))
    dB, dC = (u.new_zeros(B.shape, dtype=state) for _ in range(2))
    if u.numel() > 0 and K > 0:
        options = _launch_options(u, L, E, N)
        grid = (triton.cdiv(E, options["BLOCK_E"]), batch)
        scratch = u.new_empty(grid[0] * batch * triton.cdiv(L, options["BLOCK_L"]) * options["BLOCK_E"]
                              * options["BLOCK_N"], dtype=state)
        _selective_scan_bwd_kernel[grid](dy, u, delta, A, B, C, D if D is not None else A,
                                         delta_bias if delta_bias is not None else A, order, du, ddelta, dA, dB, dC,
                                         dD, dbias, scratch, L, K, E, N, HAS_D=D is not None,
                                         HAS_BIAS=delta_bias is not None, DELTA_SOFTPLUS=bool(delta_softplus),
                                         MERGE=bool(merge), **options)
    d_weight = None
    if delta_proj_weight is not None:
        ddelta, d_weight = project_delta_backward(ddelta, low_rank, delta_proj_weight)
    return (du.to(u.dtype), ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, d_weight)
