"""Triton forward and backward kernels of `state_fusion` (the "triton" backend); math and shapes as
`state_fusion_ref`: x (batch, H, W, C) channels-last, weight (C, k, k) (given to the kernels as (k * k, C)).

Forward: one program per (batch item and row, block of BLOCK_W columns, block of BLOCK_C channels) adds the k * k
taps, each a [BLOCK_W, BLOCK_C] tile read at clamped (border-replicated) coordinates; no padded copy. Backward: the
same programs scatter weight * dout onto the clamped source pixels of dx with `tl.atomic_add` (border pixels
receive many taps) and reduce dout * x per tap into dweight the same way; both accumulate in the state dtype, so
their summation order (and last bits) vary from run to run. fp32 / bf16 / fp16 run in fp32, fp64 in fp64.
CUDA tensors; CPU tensors only under the Triton interpreter (see `scan2d_triton`).
"""
from typing import Optional

import torch

from . import scan2d_triton
from .scan2d_ref import state_dtype

triton = scan2d_triton.triton
MAX_BLOCK_C = 64
MAX_BLOCK_W = 16


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device` (the same conditions as `scan2d_triton`)."""
    return scan2d_triton.unavailable_reason(device)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _tile(program_row, block_w, block_c, H, W, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        """(batch item, row i, columns [BLOCK_W], channels [BLOCK_C], tile mask) of a program."""
        batch, i = program_row // H, program_row % H
        cols = block_w * BLOCK_W + tl.arange(0, BLOCK_W)
        channels = block_c * BLOCK_C + tl.arange(0, BLOCK_C)
        return batch, i, cols, channels, (cols < W)[:, None] & (channels < C)[None, :]

    @triton.jit
    def _source(batch, i, cols, channels, a, d, H, W, C, K: tl.constexpr):
        """Offsets of tap (a, d)'s source pixels: rows and columns clamped to the image (border replicate)."""
        row = tl.minimum(tl.maximum(i + a - K // 2, 0), H - 1)
        col = tl.minimum(tl.maximum(cols + d - K // 2, 0), W - 1)
        return ((batch * H + row) * W + col)[:, None] * C + channels[None, :]

    @triton.jit
    def _state_fusion_fwd_kernel(x_ptr, w_ptr, out_ptr, H, W, C, K: tl.constexpr, STATE: tl.constexpr,
                                 BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        batch, i, cols, channels, mask = _tile(tl.program_id(0), tl.program_id(1), tl.program_id(2), H, W, C,
                                               BLOCK_W, BLOCK_C)
        acc = tl.zeros([BLOCK_W, BLOCK_C], STATE)
        for a in tl.static_range(K):
            for d in tl.static_range(K):
                w = tl.load(w_ptr + (a * K + d) * C + channels, mask=channels < C, other=0.0).to(STATE)
                x = tl.load(x_ptr + _source(batch, i, cols, channels, a, d, H, W, C, K), mask=mask, other=0.0)
                acc += w[None, :] * x.to(STATE)
        tl.store(out_ptr + ((batch * H + i) * W + cols)[:, None] * C + channels[None, :], acc, mask=mask)

    @triton.jit
    def _state_fusion_bwd_kernel(dout_ptr, x_ptr, w_ptr, dx_ptr, dw_ptr, H, W, C, K: tl.constexpr,
                                 STATE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
        batch, i, cols, channels, mask = _tile(tl.program_id(0), tl.program_id(1), tl.program_id(2), H, W, C,
                                               BLOCK_W, BLOCK_C)
        g = tl.load(dout_ptr + ((batch * H + i) * W + cols)[:, None] * C + channels[None, :], mask=mask,
                    other=0.0).to(STATE)
        for a in tl.static_range(K):
            for d in tl.static_range(K):
                source = _source(batch, i, cols, channels, a, d, H, W, C, K)
                w = tl.load(w_ptr + (a * K + d) * C + channels, mask=channels < C, other=0.0).to(STATE)
                tl.atomic_add(dx_ptr + source, w[None, :] * g, mask=mask)
                x = tl.load(x_ptr + source, mask=mask, other=0.0).to(STATE)
                tl.atomic_add(dw_ptr + (a * K + d) * C + channels, tl.sum(g * x, axis=0), mask=channels < C)


def _launch(x: torch.Tensor, weight: torch.Tensor):
    """(grid, meta-parameters, state dtype, weight as (k * k, C) in it)."""
    (batch, H, W, C), k = x.shape, weight.shape[-1]
    sd = state_dtype(x.dtype)
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(max(C, 1)))
    block_w = min(MAX_BLOCK_W, triton.next_power_of_2(max(W, 1)))
    grid = (batch * H, triton.cdiv(W, block_w), triton.cdiv(C, block_c))
    meta = dict(K=k, STATE=tl.float64 if sd == torch.float64 else tl.float32, BLOCK_W=block_w, BLOCK_C=block_c)
    return grid, meta, sd, weight.to(sd).reshape(C, k * k).t().contiguous()


def forward(x, weight):
    """(batch, H, W, C) in x's dtype."""
    if x.numel() == 0:
        return torch.empty_like(x)
    grid, meta, sd, taps = _launch(x, weight)
    out = torch.empty(x.shape, dtype=sd, device=x.device)
    _state_fusion_fwd_kernel[grid](x, taps, out, *x.shape[1:], **meta)
    return out.to(x.dtype)


def backward(dout, x, weight):
    """(dx, dweight) in x's and weight's dtypes."""
    if x.numel() == 0:
        return torch.zeros_like(x), torch.zeros_like(weight)
    grid, meta, sd, taps = _launch(x, weight)
    dx = torch.zeros(x.shape, dtype=sd, device=x.device)
    dtaps = torch.zeros(taps.shape, dtype=sd, device=x.device)
    _state_fusion_bwd_kernel[grid](dout, x, taps, dx, dtaps, *x.shape[1:], **meta)
    return dx.to(x.dtype), dtaps.t().reshape(weight.shape).to(weight.dtype)
