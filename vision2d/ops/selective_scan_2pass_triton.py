"""Triton forward and backward kernels of the two-pass 2D selective scan (the "triton" backend).

Same arguments and math as `selective_scan_2pass_ref` (u (batch, H W, E); delta (batch, H W, 4, E); A (4, E, N);
B, C (batch, H W, 4, N); D, delta_bias (4, E) or None). Inputs arrive contiguous.

Design. One program per (block of BLOCK_E channels, batch item) runs the four directions one after the other, each as
a sweep over the image's rows from its start corner (the rows of the transposed grids are never formed: direction 1
runs its column pass along the image's columns, i.e. across the sweep, and its row pass along the sweep's rows). A
whole row is one [BLOCK_W, BLOCK_E, BLOCK_N] register tile: the pass along it is `tl.associative_scan`, the pass
across rows an elementwise update of the row of states carried from the previous row. softplus, delta_bias, the
gates, the C read-out and the D skip are fused; merging adds the directions into y one after another in the program
(a barrier between them), without atomics.
The backward first sweeps a direction forward storing its row states and the along-row values of every pixel in a
scratch (per program: 2 H BLOCK_W BLOCK_E BLOCK_N), then sweeps back from the opposite corner: the adjoint across
rows is carried as a tile (P = a lam of the row below), the one along a row is a reverse associative scan with the
next pixel's gate. du adds over directions in the program; dA, dD, ddelta_bias and dB, dC (sums over channels) are
per-program partials summed on the host, so results do not depend on timing.

Limits. A row must fit a tile: width x next_power_of_2(N) <= MAX_ROW elements (a ValueError names the width
otherwise; the cpu backend has no such limit).

Dtypes. fp32, bf16 and fp16 inputs run with an fp32 state; fp64 in fp64. Devices: CUDA tensors; CPU tensors only
under the Triton interpreter (see `scan2d_triton`, whose jit helpers these kernels share).
"""
from typing import Optional

import torch

from . import scan2d_triton
from .scan2d_ref import state_dtype
from .selective_scan_2pass_ref import NUM_DIRECTIONS

triton = scan2d_triton.triton
TILE = 4096  # max elements of a [BLOCK_W, BLOCK_E, BLOCK_N] tile (a row needs at least BLOCK_E = 1)
MAX_ROW = 16384  # max BLOCK_W x BLOCK_N
MAX_BLOCK_E = 32


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device` (the same conditions as `scan2d_triton`)."""
    return scan2d_triton.unavailable_reason(device)


if triton is not None:
    import triton.language as tl

    from .scan2d_triton import LOG2E, _combine_adjoint, _combine_rows, _softplus

    @triton.jit
    def _params(A_ptr, d_ptr, bias_ptr, k: tl.constexpr, channels, states, E, N, HAS_D: tl.constexpr,
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
    def _row(u_ptr, delta_ptr, b_ptr, k: tl.constexpr, batch, i, cols, channels, states, bias, A2, H, W, E, N,
             DELTA_SOFTPLUS: tl.constexpr, STATE: tl.constexpr):
        """Row i of direction k's sweep (directions 2, 3 start at the bottom-right pixel): offsets of the
        [BLOCK_W, BLOCK_E] tile in a (batch, L, E) and a (batch, L, 4, E) tensor and of the [BLOCK_W, BLOCK_N] tile
        in a (batch, L, 4, N) tensor, their masks, u, the raw step size, dt, the gates a and the inputs b = dt u B
        ([BLOCK_W, BLOCK_E, BLOCK_N]; a = b = 0 past the row's end)."""
        inside = cols < W
        if k >= 2:
            p = (H - 1 - i) * W + (W - 1 - cols)
        else:
            p = i * W + cols
        position = batch * H * W + tl.where(inside, p, 0)
        mask_e = inside[:, None] & (channels < E)[None, :]
        mask_n = inside[:, None] & (states < N)[None, :]
        seq = position[:, None] * E + channels[None, :]
        dirs = (position * 4 + k)[:, None] * E + channels[None, :]
        bcs = (position * 4 + k)[:, None] * N + states[None, :]
        u = tl.load(u_ptr + seq, mask=mask_e, other=0.0).to(STATE)
        raw = tl.load(delta_ptr + dirs, mask=mask_e, other=0.0).to(STATE) + bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(raw)
        else:
            dt = raw
        b = tl.load(b_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
        a = tl.where(inside[:, None, None], tl.exp2(dt[:, :, None] * A2[None, :, :]), 0.0)
        x = (dt * u)[:, :, None] * b[:, None, :]
        return seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x

    @triton.jit
    def _advance(k: tl.constexpr, a, x, X):
        """One row of the sweep: (the new row of states X, the along-row values Y, the states h)."""
        if k % 2 == 0:  # rows then columns: Y = a Y_left + b along the row, X = a X_up + Y
            _, Y = tl.associative_scan((a, x), 0, _combine_rows)
            X = a * X + Y
            h = X
        else:  # columns then rows: X = a X_up + b, Y = a Y_left + X along the row
            X = a * X + x
            _, Y = tl.associative_scan((a, X), 0, _combine_rows)
            h = Y
        return X, Y, h

    @triton.jit
    def _scan_2pass_fwd_kernel(u_ptr, delta_ptr, A_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, y_ptr, H, W, E, N,
                               HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
                               MERGE: tl.constexpr, STATE: tl.constexpr, BLOCK_W: tl.constexpr,
                               BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """y (batch, L, E) if MERGE else (batch, L, 4, E), in STATE; grid (cdiv(E, BLOCK_E), batch)."""
        channels = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        batch = tl.program_id(1).to(tl.int64)
        cols = tl.arange(0, BLOCK_W)
        states = tl.arange(0, BLOCK_N)
        for k in tl.static_range(4):
            A, d, bias, a_offsets = _params(A_ptr, d_ptr, bias_ptr, k, channels, states, E, N, HAS_D, HAS_BIAS,
                                            STATE)
            A2 = A * LOG2E
            X = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)
            for i in range(0, H):
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _row(
                    u_ptr, delta_ptr, b_ptr, k, batch, i, cols, channels, states, bias, A2, H, W, E, N,
                    DELTA_SOFTPLUS, STATE)
                X, Y, h = _advance(k, a, x, X)
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
    def _scan_2pass_bwd_kernel(dy_ptr, u_ptr, delta_ptr, A_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, du_ptr, ddelta_ptr,
                               dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, scratch_ptr, batch_size, H, W, E, N,
                               HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
                               MERGE: tl.constexpr, STATE: tl.constexpr, BLOCK_W: tl.constexpr,
                               BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
        """All gradients; grid (cdiv(E, BLOCK_E), batch).

        du (batch, L, E) in STATE; ddelta (batch, L, 4, E) in delta's dtype; dA (batch, 4, E, N) and dD, dbias
        (batch, 4, E) per-batch partials; dB, dC (E blocks, batch, L, 4, N) per-program partials; scratch: per
        program the row states X and along-row values Y of every row, 2 H [BLOCK_W, BLOCK_E, BLOCK_N].
        """
        pid_e = tl.program_id(0)
        batch = tl.program_id(1).to(tl.int64)
        channels = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        cols = tl.arange(0, BLOCK_W)
        states = tl.arange(0, BLOCK_N)
        row_size = BLOCK_W * BLOCK_E * BLOCK_N
        program = batch * tl.num_programs(0) + pid_e
        slot = (cols[:, None, None] * BLOCK_E + tl.arange(0, BLOCK_E)[None, :, None]) * BLOCK_N + states[None, None, :]
        X_rows = scratch_ptr + program * 2 * H * row_size + slot
        Y_rows = X_rows + H * row_size
        partial_bc = pid_e.to(tl.int64) * batch_size * H * W * 4 * N  # this program's dB / dC partial
        for k in tl.static_range(4):
            A, d, bias, a_offsets = _params(A_ptr, d_ptr, bias_ptr, k, channels, states, E, N, HAS_D, HAS_BIAS,
                                            STATE)
            A2 = A * LOG2E
            # pass 1: the sweep, storing each row's states X and along-row values Y
            X = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)
            for i in range(0, H):
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _row(
                    u_ptr, delta_ptr, b_ptr, k, batch, i, cols, channels, states, bias, A2, H, W, E, N,
                    DELTA_SOFTPLUS, STATE)
                X, Y, h = _advance(k, a, x, X)
                tl.store(X_rows + i * row_size, X)
                tl.store(Y_rows + i * row_size, Y)
            tl.debug_barrier()
            # pass 2: rows from the last; P = a lam_X of the row below
            P = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)
            dA = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
            dD = tl.zeros([BLOCK_E], dtype=STATE)
            dbias = tl.zeros([BLOCK_E], dtype=STATE)
            ones = tl.full([BLOCK_W, BLOCK_E, BLOCK_N], 1.0, STATE)
            for i_from_end in range(0, H):
                i = H - 1 - i_from_end
                seq, dirs, bcs, mask_e, mask_n, u, raw, dt, a, x = _row(
                    u_ptr, delta_ptr, b_ptr, k, batch, i, cols, channels, states, bias, A2, H, W, E, N,
                    DELTA_SOFTPLUS, STATE)
                X = tl.load(X_rows + i * row_size)
                Y = tl.load(Y_rows + i * row_size)
                X_up = tl.load(X_rows + (i - 1) * row_size, mask=(cols[:, None, None] >= 0) & (i > 0), other=0.0)
                Y_left = tl.load(Y_rows + i * row_size - BLOCK_E * BLOCK_N, mask=(cols > 0)[:, None, None],
                                 other=0.0)
                b = tl.load(b_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
                c = tl.load(c_ptr + bcs, mask=mask_n, other=0.0).to(STATE)
                if MERGE:
                    dy = tl.load(dy_ptr + seq, mask=mask_e, other=0.0).to(STATE)
                else:
                    dy = tl.load(dy_ptr + dirs, mask=mask_e, other=0.0).to(STATE)
                g = dy[:, :, None] * c[:, None, :]
                if k % 2 == 0:
                    lam_x = g + P
                    _, _, lam_y = tl.associative_scan((ones, a, lam_x), 0, _combine_adjoint, reverse=True)
                    lam_b = lam_y
                    h = X
                else:
                    _, _, lam_y = tl.associative_scan((ones, a, g), 0, _combine_adjoint, reverse=True)
                    lam_x = lam_y + P
                    lam_b = lam_x
                    h = Y
                P = a * lam_x
                d_exponent = (lam_x * X_up + lam_y * Y_left) * a  # the gradient w.r.t. dt A
                lam_bb = tl.sum(lam_b * b[:, None, :], axis=2)
                ddelta = tl.sum(d_exponent * A[None, :, :], axis=2) + u * lam_bb
                if DELTA_SOFTPLUS:
                    ddelta = ddelta * tl.sigmoid(raw)
                du = dt * lam_bb + d[None, :] * dy
                if k > 0:
                    du += tl.load(du_ptr + seq, mask=mask_e, other=0.0)
                tl.store(du_ptr + seq, du, mask=mask_e)
                tl.store(ddelta_ptr + dirs, ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask_e)
                tl.store(dB_ptr + partial_bc + bcs, tl.sum(lam_b * (dt * u)[:, :, None], axis=1), mask=mask_n)
                tl.store(dC_ptr + partial_bc + bcs, tl.sum(h * dy[:, :, None], axis=1), mask=mask_n)
                dA += tl.sum(d_exponent * dt[:, :, None], axis=0)
                dD += tl.sum(dy * u, axis=0)
                dbias += tl.sum(ddelta, axis=0)
            partial = batch * 4 * E + k * E + channels
            tl.store(dA_ptr + batch * 4 * E * N + a_offsets, dA, mask=(channels < E)[:, None] & (states < N)[None, :])
            tl.store(dD_ptr + partial, dD, mask=channels < E)
            tl.store(dbias_ptr + partial, dbias, mask=channels < E)
            tl.debug_barrier()  # the next direction reads du and reuses the scratch


def _launch_options(u, W: int, E: int, N: int):
    """Tile sizes (a whole row, all states, as many channels as fit TILE), the state dtype and warps."""
    block_w, block_n = triton.next_power_of_2(max(W, 1)), triton.next_power_of_2(max(N, 1))
    if block_w * block_n > MAX_ROW:
        raise ValueError(f"selective_scan_2pass: the triton backend holds a whole row of states in one tile, at most "
                         f"{MAX_ROW} elements; width {W} with N = {N} needs {block_w * block_n}: use the cpu "
                         f"backend or a narrower map")
    block_e = max(1, min(triton.next_power_of_2(max(E, 1)), MAX_BLOCK_E, TILE // (block_w * block_n)))
    state = tl.float64 if state_dtype(u.dtype) == torch.float64 else tl.float32
    return dict(STATE=state, BLOCK_W=block_w, BLOCK_E=block_e, BLOCK_N=block_n,
                num_warps=scan2d_triton._num_warps(block_w * block_e * block_n))


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge):
    """y in u's dtype, (batch, L, E) if `merge` else (batch, L, 4, E)."""
    (batch, L, E), N = u.shape, A.shape[2]
    y = u.new_zeros((batch, L, E) if merge else (batch, L, NUM_DIRECTIONS, E), dtype=state_dtype(u.dtype))
    if y.numel() > 0:
        options = _launch_options(u, width, E, N)
        grid = (triton.cdiv(E, options["BLOCK_E"]), batch)
        _scan_2pass_fwd_kernel[grid](u, delta, A, B, C, D if D is not None else A,
                                     delta_bias if delta_bias is not None else A, y, height, width, E, N,
                                     HAS_D=D is not None, HAS_BIAS=delta_bias is not None,
                                     DELTA_SOFTPLUS=bool(delta_softplus), MERGE=bool(merge), **options)
    return y.to(u.dtype)


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's dtype (None for an absent D / delta_bias)."""
    (batch, L, E), (K, _, N) = u.shape, A.shape
    state = state_dtype(u.dtype)
    du = u.new_zeros(u.shape, dtype=state)
    ddelta = torch.zeros_like(delta)
    dA = u.new_zeros((batch, K, E, N), dtype=state)
    dD, dbias = (u.new_zeros((batch, K, E), dtype=state) for _ in range(2))
    dB = dC = u.new_zeros((1, *B.shape), dtype=state)
    if u.numel() > 0:
        options = _launch_options(u, width, E, N)
        blocks_e = triton.cdiv(E, options["BLOCK_E"])
        dB, dC = (u.new_zeros((blocks_e, *B.shape), dtype=state) for _ in range(2))
        row = options["BLOCK_W"] * options["BLOCK_E"] * options["BLOCK_N"]
        scratch = u.new_empty(blocks_e * batch * 2 * height * row, dtype=state)
        _scan_2pass_bwd_kernel[(blocks_e, batch)](
            dy, u, delta, A, B, C, D if D is not None else A, delta_bias if delta_bias is not None else A, du, ddelta,
            dA, dB, dC, dD, dbias, scratch, batch, height, width, E, N, HAS_D=D is not None,
            HAS_BIAS=delta_bias is not None, DELTA_SOFTPLUS=bool(delta_softplus), MERGE=bool(merge), **options)
    grads = (du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), None if D is None else dD.sum(0),
             None if delta_bias is None else dbias.sum(0))
    like = (u, delta, A, B, C, D, delta_bias)
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, like))
