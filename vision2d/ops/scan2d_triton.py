"""Triton forward and backward kernels of the Mamba2D 2D selective scan (the "triton" backend).

Same arguments and math as `scan2d_ref` (channels-last u, delta_t, delta_l (B, H, W, E); A_t, A_l (E, N);
B_t, B_l, C (B, H, W, N); D (E,) or None). Inputs arrive contiguous.

Design. One program per (batch, block of BLOCK_E channels) walks the image row by row (rows of the scan; with
`reverse=True` scan row i / column j read memory row H-1-i / column W-1-j, no flipped copies). The state of the whole
current row is a [BLOCK_W, BLOCK_E, BLOCK_N] register tile. Given the row above (the previous tile, same column, so
no shift is needed), a row is the 1D linear recurrence
    h(i, j) = alpha(i, j) h(i, j-1) + beta(i, j),   alpha = wL aL,   beta = wL xL + wT (aT h(i-1, j) + xT),
solved by `tl.associative_scan` along the row. softplus, the gates, the C read-out and the D skip are fused.
The backward rebuilds the states in segments of SEG ~ sqrt(H) rows (a first pass stores the state of every
SEG-th row; each segment is then recomputed and its rows kept in a per-program scratch), then runs the adjoint
    lam(i, j) = dy C + wL aL lam(i, j+1) + wT aT lam(i+1, j)     (gates of the right / lower pixel)
bottom-up, each row a reverse associative scan. dA and dD are reduced per program into (B, E, N) / (B, E) partials
summed over the batch on the host; dB_t, dB_l and dC (sums over E) are accumulated with `tl.atomic_add` in the
state dtype (so their summation order, and last bits, vary from run to run).
Tiles hold a whole row (BLOCK_W = next_pow2(W)) and up to FORWARD_TILE / BACKWARD_TILE elements; rows much wider
than 128 pixels still work but spill registers (ptxas for sm_90, W = 56, N = 16: forward 124 registers, backward
255 registers with an 8-byte spill).

Dtypes. fp32, bf16 and fp16 inputs run with an fp32 state and fp32 arithmetic (half inputs are rounded only at load
and store); fp64 inputs run entirely in fp64. The gates exp(delta A) with A < 0 stay in (0, 1], so large deltas or
long rows cannot overflow.

Memory. The forward allocates nothing but y: the full (B, H, W, E, N) state never leaves the chip. The backward
needs, besides the gradients, a state-dtype scratch of NUM_SEG - 1 + SEG rows (W x BLOCK_E x N) per program, about
2 / sqrt(H) of the full state (`backward_scratch_numel`: 25% at 56 x 56, 36% at 28 x 28, 17% at 128 x 128), plus
accumulators for dB_t, dB_l, dC (3 B H W N) and the partials B E (2 N + 1), all in the state dtype.

Devices. CUDA tensors; CPU tensors only when the kernels were defined under the Triton interpreter, i.e. when
TRITON_INTERPRET=1 was set before this module was imported (`unavailable_reason` says so otherwise).
"""
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # the backend reports itself unavailable
    triton = None
    _TRITON_IMPORT_ERROR = e
else:
    _TRITON_IMPORT_ERROR = None

FORWARD_TILE = 2048  # max elements of a [BLOCK_W, BLOCK_E, BLOCK_N] state tile in the forward kernel
BACKWARD_TILE = 2048  # and in the backward kernel


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device`, else why not."""
    if triton is None:
        return f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    # @triton.jit builds interpreted kernels iff TRITON_INTERPRET was set when it decorated them
    interpreted = not isinstance(_scan2d_fwd_kernel, triton.runtime.JITFunction)
    if device.type == "cuda" or (device.type == "cpu" and interpreted):
        return None
    if device.type == "cpu":
        return ("CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before vision2d.ops.scan2d_triton "
                "is imported")
    return f"Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}"


if triton is not None:
    LOG2E = tl.constexpr(1.4426950408889634)  # gates are exp2(delta A log2(e))

    @triton.jit
    def _softplus(x):
        """PyTorch softplus (beta 1, threshold 20) with an accurate log1p."""
        z = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + z
        exact = w == 1.0  # z below half an ulp of 1: log1p(z) = z
        log1p = tl.where(exact, z, tl.log(w) * (z / tl.where(exact, 1.0, w - 1.0)))
        return tl.where(x > 20.0, x, log1p)

    @triton.jit
    def _combine_rows(alpha_a, h_a, alpha_b, h_b):
        """Compose h -> alpha h + beta maps: the columns of a first, then those of b."""
        return alpha_a * alpha_b, alpha_b * h_a + h_b

    @triton.jit
    def _combine_adjoint(prod_a, first_a, lam_a, prod_b, first_b, lam_b):
        """Reverse-scan combine of the adjoint: b is the segment left of a.

        A segment [j, k] is (prod = alpha(j+1) ... alpha(k), first = alpha(j), lam = its part of lam(j)); the
        adjoint reaches column j from column j+1 through the gate alpha(j+1) of the right neighbour.
        """
        link = prod_b * first_a
        return link * prod_a, first_b, lam_b + link * lam_a

    @triton.jit
    def _row_pixels(row, cols, H, W, REVERSE: tl.constexpr):
        """Memory pixel index (i * W + j within one image) of scan row `row`, scan columns `cols` [BLOCK_W]."""
        if REVERSE:
            return (H - 1 - row) * W + (W - 1 - cols)
        else:
            return row * W + cols

    @triton.jit
    def _direction_weights(row, cols, W, STATE: tl.constexpr):
        """(wL, wT) [BLOCK_W]: (1, 0) on row 0, (0, 1) on column 0 below it, (1/2, 1/2) inside, 0 off the image."""
        inside = cols < W
        w_l = tl.where(row == 0, 1.0, tl.where(cols == 0, 0.0, 0.5))
        w_t = tl.where(row == 0, 0.0, tl.where(cols == 0, 1.0, 0.5))
        return tl.where(inside, w_l, 0.0).to(STATE), tl.where(inside, w_t, 0.0).to(STATE)

    @triton.jit
    def _tile_masks(cols, channels, states, W, E, N):
        """Masks of the [BLOCK_W, BLOCK_E], [BLOCK_W, BLOCK_N] and [BLOCK_E, BLOCK_N] tiles, and the (E, N) offsets."""
        mask_e = (cols < W)[:, None] & (channels < E)[None, :]
        mask_n = (cols < W)[:, None] & (states < N)[None, :]
        mask_a = (channels < E)[:, None] & (states < N)[None, :]
        return mask_e, mask_n, mask_a, channels[:, None] * N + states[None, :]

    @triton.jit
    def _load_pixels(ptr, pixels, channels, n_channels, mask, STATE: tl.constexpr):
        """[BLOCK_W, BLOCK_C] tile of a (.., n_channels) channels-last tensor, zero where masked, in STATE."""
        offsets = pixels[:, None] * n_channels + channels[None, :]
        return tl.load(ptr + offsets, mask=mask, other=0.0).to(STATE)

    @triton.jit
    def _row_coefficients(u, dt, dl, b_t, b_l, A2_t, A2_l, w_l, w_t, h_up):
        """Gate aT and (alpha, beta) of h = alpha h_left + beta for one row, each [BLOCK_W, BLOCK_E, BLOCK_N].

        u, dt, dl [BLOCK_W, BLOCK_E] (deltas after softplus); b_t, b_l [BLOCK_W, BLOCK_N]; A2_t, A2_l [BLOCK_E,
        BLOCK_N]: A log2(e), so that the gates are exp2(delta A2); w_l, w_t [BLOCK_W]; h_up: the state of the row above.
        """
        a_t = tl.exp2(dt[:, :, None] * A2_t[None, :, :])
        a_l = tl.exp2(dl[:, :, None] * A2_l[None, :, :])
        x_t = (dt * u)[:, :, None] * b_t[:, None, :]
        x_l = (dl * u)[:, :, None] * b_l[:, None, :]
        w_l3 = w_l[:, None, None]
        w_t3 = w_t[:, None, None]
        return a_t, w_l3 * a_l, w_l3 * x_l + w_t3 * (a_t * h_up + x_t)

    @triton.jit
    def _scan_row(u_ptr, dt_ptr, dl_ptr, bt_ptr, bl_ptr, A2_t, A2_l, h_up, row, pixels, cols, channels, states, W,
                  E, N, mask_e, mask_n, DELTA_SOFTPLUS: tl.constexpr, STATE: tl.constexpr):
        """The states of scan row `row` [BLOCK_W, BLOCK_E, BLOCK_N] from those of the row above; also returns u."""
        u = _load_pixels(u_ptr, pixels, channels, E, mask_e, STATE)
        dt = _load_pixels(dt_ptr, pixels, channels, E, mask_e, STATE)
        dl = _load_pixels(dl_ptr, pixels, channels, E, mask_e, STATE)
        if DELTA_SOFTPLUS:
            dt = _softplus(dt)
            dl = _softplus(dl)
        b_t = _load_pixels(bt_ptr, pixels, states, N, mask_n, STATE)
        b_l = _load_pixels(bl_ptr, pixels, states, N, mask_n, STATE)
        w_l, w_t = _direction_weights(row, cols, W, STATE)
        _, alpha, beta = _row_coefficients(u, dt, dl, b_t, b_l, A2_t, A2_l, w_l, w_t, h_up)
        _, h = tl.associative_scan((alpha, beta), 0, _combine_rows)
        return h, u

    @triton.jit
    def _scan2d_fwd_kernel(u_ptr, dt_ptr, dl_ptr, At_ptr, Al_ptr, bt_ptr, bl_ptr, c_ptr, d_ptr, y_ptr, H, W, E, N,
                           HAS_D: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
                           STATE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_E: tl.constexpr,
                           BLOCK_N: tl.constexpr):
        """y (B, H, W, E); grid (cdiv(E, BLOCK_E), B). The row state stays in registers."""
        pid_e = tl.program_id(0)
        batch_pixels = tl.program_id(1).to(tl.int64) * H * W
        cols = tl.arange(0, BLOCK_W)
        channels = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        states = tl.arange(0, BLOCK_N)
        mask_e, mask_n, mask_a, a_offsets = _tile_masks(cols, channels, states, W, E, N)
        A2_t = tl.load(At_ptr + a_offsets, mask=mask_a, other=0.0).to(STATE) * LOG2E
        A2_l = tl.load(Al_ptr + a_offsets, mask=mask_a, other=0.0).to(STATE) * LOG2E
        if HAS_D:
            d = tl.load(d_ptr + channels, mask=channels < E, other=0.0).to(STATE)
        h = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)
        for row in range(0, H):
            pixels = batch_pixels + _row_pixels(row, cols, H, W, REVERSE)
            h, u = _scan_row(u_ptr, dt_ptr, dl_ptr, bt_ptr, bl_ptr, A2_t, A2_l, h, row, pixels, cols, channels, states,
                             W, E, N, mask_e, mask_n, DELTA_SOFTPLUS, STATE)
            c = _load_pixels(c_ptr, pixels, states, N, mask_n, STATE)
            y = tl.sum(h * c[:, None, :], axis=2)
            if HAS_D:
                y += d[None, :] * u
            y_offsets = pixels[:, None] * E + channels[None, :]
            tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask_e)

    @triton.jit
    def _scan2d_bwd_kernel(dy_ptr, u_ptr, dt_ptr, dl_ptr, At_ptr, Al_ptr, bt_ptr, bl_ptr, c_ptr, d_ptr,
                           du_ptr, ddt_ptr, ddl_ptr, dAt_ptr, dAl_ptr, dbt_ptr, dbl_ptr, dc_ptr, dd_ptr, scratch_ptr,
                           H, W, E, N, SEG, NUM_SEG,
                           HAS_D: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr, REVERSE: tl.constexpr,
                           STATE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_E: tl.constexpr,
                           BLOCK_N: tl.constexpr):
        """All gradients; grid (cdiv(E, BLOCK_E), B).

        du, ddt, ddl (B, H, W, E) in the input dtypes; dAt, dAl (B, E, N) and dd (B, E) per-batch partials;
        dbt, dbl, dc (B, H, W, N) zero-initialised accumulators (atomics over channel blocks); scratch: per program
        NUM_SEG - 1 + SEG state rows of W x BLOCK_E x BLOCK_N (slot s < NUM_SEG - 1: the state entering segment
        s + 1, i.e. of row (s + 1) SEG - 1; slot NUM_SEG - 1 + r: row r of the segment being differentiated).
        """
        pid_e = tl.program_id(0)
        pid_b = tl.program_id(1)
        batch_pixels = pid_b.to(tl.int64) * H * W
        cols = tl.arange(0, BLOCK_W)
        channels = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
        states = tl.arange(0, BLOCK_N)
        mask_e, mask_n, mask_a, a_offsets = _tile_masks(cols, channels, states, W, E, N)
        A_t = tl.load(At_ptr + a_offsets, mask=mask_a, other=0.0).to(STATE)
        A_l = tl.load(Al_ptr + a_offsets, mask=mask_a, other=0.0).to(STATE)
        A2_t = A_t * LOG2E
        A2_l = A_l * LOG2E
        if HAS_D:
            d = tl.load(d_ptr + channels, mask=channels < E, other=0.0).to(STATE)
        row_size = W * BLOCK_E * BLOCK_N  # one scratch slot: the image columns only
        tile = (cols[:, None, None] * (BLOCK_E * BLOCK_N) + tl.arange(0, BLOCK_E)[None, :, None] * BLOCK_N
                + states[None, None, :])
        mask_tile = (cols < W)[:, None, None]
        program = pid_b.to(tl.int64) * tl.num_programs(0) + pid_e
        scratch = scratch_ptr + program * (NUM_SEG - 1 + SEG) * row_size + tile
        segment_rows = scratch + (NUM_SEG - 1) * row_size

        # pass 1: the state entering every segment
        h = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)
        for seg in range(1, NUM_SEG):
            for r in range(0, SEG):
                row = (seg - 1) * SEG + r
                pixels = batch_pixels + _row_pixels(row, cols, H, W, REVERSE)
                h, _ = _scan_row(u_ptr, dt_ptr, dl_ptr, bt_ptr, bl_ptr, A2_t, A2_l, h, row, pixels, cols, channels,
                                 states, W, E, N, mask_e, mask_n, DELTA_SOFTPLUS, STATE)
            tl.store(scratch + (seg - 1) * row_size, h, mask=mask_tile)

        # pass 2: segments bottom-up; recompute a segment's rows, then run the adjoint through them
        lam_down = tl.zeros([BLOCK_W, BLOCK_E, BLOCK_N], dtype=STATE)  # wT aT lam of the row below
        dA_t = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
        dA_l = tl.zeros([BLOCK_E, BLOCK_N], dtype=STATE)
        dd = tl.zeros([BLOCK_E], dtype=STATE)
        for seg_from_end in range(0, NUM_SEG):
            seg = NUM_SEG - 1 - seg_from_end
            first_row = seg * SEG
            seg_rows = tl.minimum(SEG, H - first_row)
            tl.debug_barrier()
            h = tl.load(scratch + (seg - 1) * row_size, mask=mask_tile & (seg > 0), other=0.0)
            for r in range(0, seg_rows):
                row = first_row + r
                pixels = batch_pixels + _row_pixels(row, cols, H, W, REVERSE)
                h, _ = _scan_row(u_ptr, dt_ptr, dl_ptr, bt_ptr, bl_ptr, A2_t, A2_l, h, row, pixels, cols, channels,
                                 states, W, E, N, mask_e, mask_n, DELTA_SOFTPLUS, STATE)
                tl.store(segment_rows + r * row_size, h, mask=mask_tile)
            tl.debug_barrier()
            for r_from_end in range(0, seg_rows):  # h holds the state of row `row`
                r = seg_rows - 1 - r_from_end
                row = first_row + r
                up_slot = tl.where(r > 0, NUM_SEG - 1 + r - 1, seg - 1)
                h_up = tl.load(scratch + up_slot * row_size, mask=mask_tile & (row > 0), other=0.0)
                pixels = batch_pixels + _row_pixels(row, cols, H, W, REVERSE)
                u = _load_pixels(u_ptr, pixels, channels, E, mask_e, STATE)
                dt_raw = _load_pixels(dt_ptr, pixels, channels, E, mask_e, STATE)
                dl_raw = _load_pixels(dl_ptr, pixels, channels, E, mask_e, STATE)
                dy = _load_pixels(dy_ptr, pixels, channels, E, mask_e, STATE)
                b_t = _load_pixels(bt_ptr, pixels, states, N, mask_n, STATE)
                b_l = _load_pixels(bl_ptr, pixels, states, N, mask_n, STATE)
                c = _load_pixels(c_ptr, pixels, states, N, mask_n, STATE)
                if DELTA_SOFTPLUS:
                    dt = _softplus(dt_raw)
                    dl = _softplus(dl_raw)
                else:
                    dt = dt_raw
                    dl = dl_raw
                w_l, w_t = _direction_weights(row, cols, W, STATE)
                a_t, alpha, beta = _row_coefficients(u, dt, dl, b_t, b_l, A2_t, A2_l, w_l, w_t, h_up)
                g = dy[:, :, None] * c[:, None, :] + lam_down
                _, _, lam = tl.associative_scan((tl.full(g.shape, 1.0, STATE), alpha, g), 0, _combine_adjoint,
                                                reverse=True)
                w_l3 = w_l[:, None, None]
                dx_l = w_l3 * lam
                dx_t = w_t[:, None, None] * lam
                # gradients w.r.t. the exponents dl A_l and dt A_t; alpha h_left = h - beta
                dexp_l = tl.where(w_l3 > 0.0, lam * (h - beta), 0.0)
                dexp_t = dx_t * a_t * h_up
                bl_dx = tl.sum(dx_l * b_l[:, None, :], axis=2)
                bt_dx = tl.sum(dx_t * b_t[:, None, :], axis=2)
                ddl = tl.sum(dexp_l * A_l[None, :, :], axis=2) + u * bl_dx
                ddt = tl.sum(dexp_t * A_t[None, :, :], axis=2) + u * bt_dx
                du = dl * bl_dx + dt * bt_dx
                if HAS_D:
                    du += d[None, :] * dy
                if DELTA_SOFTPLUS:
                    ddl = ddl * tl.sigmoid(dl_raw)
                    ddt = ddt * tl.sigmoid(dt_raw)
                e_offsets = pixels[:, None] * E + channels[None, :]
                tl.store(du_ptr + e_offsets, du.to(du_ptr.dtype.element_ty), mask=mask_e)
                tl.store(ddt_ptr + e_offsets, ddt.to(ddt_ptr.dtype.element_ty), mask=mask_e)
                tl.store(ddl_ptr + e_offsets, ddl.to(ddl_ptr.dtype.element_ty), mask=mask_e)
                n_offsets = pixels[:, None] * N + states[None, :]
                db_l = tl.sum(dx_l * (dl * u)[:, :, None], axis=1)
                db_t = tl.sum(dx_t * (dt * u)[:, :, None], axis=1)
                tl.atomic_add(dbl_ptr + n_offsets, db_l, mask=mask_n, sem="relaxed")
                tl.atomic_add(dbt_ptr + n_offsets, db_t, mask=mask_n, sem="relaxed")
                tl.atomic_add(dc_ptr + n_offsets, tl.sum(h * dy[:, :, None], axis=1), mask=mask_n, sem="relaxed")
                dA_l += tl.sum(dexp_l * dl[:, :, None], axis=0)
                dA_t += tl.sum(dexp_t * dt[:, :, None], axis=0)
                dd += tl.sum(dy * u, axis=0)
                lam_down = dx_t * a_t
                h = h_up

        partial_offsets = pid_b.to(tl.int64) * E * N + a_offsets
        tl.store(dAt_ptr + partial_offsets, dA_t, mask=mask_a)
        tl.store(dAl_ptr + partial_offsets, dA_l, mask=mask_a)
        tl.store(dd_ptr + pid_b.to(tl.int64) * E + channels, dd, mask=channels < E)


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_sizes(W: int, E: int, N: int, max_tile: int):
    """(BLOCK_W, BLOCK_E, BLOCK_N): the whole row and all states in one tile, as many channels as fit in max_tile."""
    block_w, block_n = triton.next_power_of_2(max(W, 1)), triton.next_power_of_2(max(N, 1))
    block_e = max(1, min(triton.next_power_of_2(E), max_tile // (block_w * block_n)))
    return block_w, block_e, block_n


def _backward_plan(H: int, W: int, E: int, N: int):
    """((BLOCK_W, BLOCK_E, BLOCK_N), SEG, NUM_SEG) of the backward kernel.

    SEG (rows per segment, about sqrt(H)) minimises the scratch rows NUM_SEG - 1 + SEG, NUM_SEG = ceil(H / SEG).
    """
    seg = min(range(1, max(H, 1) + 1), key=lambda k: (triton.cdiv(H, k) - 1 + k, -k))
    return _block_sizes(W, E, N, BACKWARD_TILE), seg, triton.cdiv(H, seg)


def backward_scratch_numel(B: int, H: int, W: int, E: int, N: int) -> int:
    """Elements of the backward's state scratch (the full state has B H W E N)."""
    (_, block_e, block_n), seg, num_seg = _backward_plan(H, W, E, N)
    return B * triton.cdiv(E, block_e) * (num_seg - 1 + seg) * W * block_e * block_n


def _num_warps(tile: int) -> int:
    """About 8 tile elements per thread."""
    return max(1, min(8, tile // 256))


def forward(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D=None, delta_softplus=True, reverse=False):
    """y (B, H, W, E) in u's dtype; see the module docstring."""
    Bsz, H, W, E = u.shape
    N = A_t.shape[1]
    y = torch.empty_like(u)
    if y.numel() == 0:
        return y.zero_()
    state = _state_dtype(u.dtype)
    block_w, block_e, block_n = _block_sizes(W, E, N, FORWARD_TILE)
    grid = (triton.cdiv(E, block_e), Bsz)
    _scan2d_fwd_kernel[grid](u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D if D is not None else u, y, H, W, E, N,
                             HAS_D=D is not None, DELTA_SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse),
                             STATE=tl.float64 if state == torch.float64 else tl.float32, BLOCK_W=block_w,
                             BLOCK_E=block_e, BLOCK_N=block_n, num_warps=_num_warps(block_w * block_e * block_n))
    return y


def backward(dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D=None, delta_softplus=True, reverse=False):
    """(du, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD), each in its input's dtype (dD None without D)."""
    Bsz, H, W, E = u.shape
    N = A_t.shape[1]
    state = _state_dtype(u.dtype)
    du, ddt, ddl = torch.empty_like(u), torch.empty_like(delta_t), torch.empty_like(delta_l)
    dA_t = u.new_zeros((Bsz, E, N), dtype=state)
    dA_l = torch.zeros_like(dA_t)
    dd = u.new_zeros((Bsz, E), dtype=state)
    dB_t, dB_l, dC = (u.new_zeros((Bsz, H, W, N), dtype=state) for _ in range(3))
    if u.numel() == 0:
        for t in (du, ddt, ddl):
            t.zero_()
    else:
        (block_w, block_e, block_n), seg, num_seg = _backward_plan(H, W, E, N)
        grid = (triton.cdiv(E, block_e), Bsz)
        scratch = u.new_empty(backward_scratch_numel(Bsz, H, W, E, N), dtype=state)
        _scan2d_bwd_kernel[grid](dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D if D is not None else u,
                                 du, ddt, ddl, dA_t, dA_l, dB_t, dB_l, dC, dd, scratch, H, W, E, N, seg, num_seg,
                                 HAS_D=D is not None, DELTA_SOFTPLUS=bool(delta_softplus), REVERSE=bool(reverse),
                                 STATE=tl.float64 if state == torch.float64 else tl.float32, BLOCK_W=block_w,
                                 BLOCK_E=block_e, BLOCK_N=block_n, num_warps=_num_warps(block_w * block_e * block_n))
    dD = dd.sum(0).to(D.dtype) if D is not None else None
    return (du, ddt, ddl, dA_t.sum(0).to(A_t.dtype), dA_l.sum(0).to(A_l.dtype), dB_t.to(B_t.dtype),
            dB_l.to(B_l.dtype), dC.to(C.dtype), dD)
