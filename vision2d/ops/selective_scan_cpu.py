"""The "cpu" backend of `selective_scan`: the C++/OpenMP kernel `kernels/cpu/selective_scan_cpu.cpp`, loaded with
ctypes through `native.NativeLibrary`. Half-precision inputs are widened to float32 here (the kernel's state type),
and outputs cast back. With delta_proj_weight the forward kernel projects the low-rank delta as it scans; the
backward kernel takes the projected delta (`project_delta`) and its gradient maps back (`project_delta_backward`).
"""
import ctypes
from typing import Optional

import torch

from .native import NativeLibrary
from .scan2d_ref import in_state_dtype, state_dtype
from .selective_scan_ref import ORDER_ERROR, project_delta, project_delta_backward

# per thread: the backward recomputes all of a channel block's states when they fit, else segments of steps restarted
# from checkpointed states (one more forward pass)
STATE_BUDGET_BYTES = 4 << 20


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"selective_scan_forward_{suffix}")
        forward.argtypes = [ptr] * 8 + [i64, ptr, ptr, i64, ptr] + [i64] * 5 + [i32] * 3
        forward.restype = i32
        backward = getattr(lib, f"selective_scan_backward_{suffix}")
        backward.argtypes = [ptr] * 16 + [i64] * 5 + [i32] * 2 + [i64, i64, i32]
        backward.restype = i32
    lib.selective_scan_orders_are_permutations.argtypes = [ptr, i64, i64]
    lib.selective_scan_orders_are_permutations.restype = i32


LIBRARY = NativeLibrary("cpu/selective_scan_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def _pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _checked_order(order: torch.Tensor) -> torch.Tensor:
    """`order` contiguous; ValueError unless its rows are permutations (checked natively: a sort costs more)."""
    order = order.contiguous()
    if not LIBRARY.load().selective_scan_orders_are_permutations(order.data_ptr(), *order.shape):
        raise ValueError(ORDER_ERROR)
    return order


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge, delta_proj_weight=None):
    """y in u's dtype, (batch, T, E) if `merge` else (batch, T, K, E) for order (K, T); arguments as in
    `selective_scan_ref` (T a multiple of L: periodic inputs, read in place at order mod L)."""
    sd = state_dtype(u.dtype)
    (batch, period, E), (K, _, N) = u.shape, A.shape
    order = _checked_order(order)
    T = order.shape[1]
    input_order = order if T == period else order % period
    if delta_proj_weight is not None and delta_proj_weight.shape[2] == 0:
        # rank 0 projects to 0; the kernel would read the empty weight's null pointer as no projection
        delta, delta_proj_weight = delta.new_zeros(batch, period, K, E), None
    y = torch.empty((batch, T, E) if merge else (batch, T, K, E), dtype=sd)
    if y.numel() > 0:
        inputs = in_state_dtype(sd, u, delta, A, B, C, D, delta_bias, delta_proj_weight)  # weight (K, E, R)
        rank = 0 if delta_proj_weight is None else delta_proj_weight.shape[2]
        LIBRARY.call(f"selective_scan_forward_{'f64' if sd == torch.float64 else 'f32'}", *map(_pointer, inputs),
                     rank, order.data_ptr(), input_order.data_ptr(), period, y.data_ptr(), batch, T, K, E, N,
                     int(delta_softplus), int(merge), torch.get_num_threads())
    return y.to(u.dtype)


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, order, merge, delta_proj_weight=None):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias, ddelta_proj_weight), each in its input's dtype (None for an absent
    D / delta_bias / delta_proj_weight)."""
    sd = state_dtype(u.dtype)
    (batch, L, E), (K, _, N) = u.shape, A.shape
    order = _checked_order(order)
    low_rank = delta
    if delta_proj_weight is not None:
        delta = project_delta(low_rank, delta_proj_weight, sd)
    threads = torch.get_num_threads()
    blocks = LIBRARY.channel_blocks(E, sd.itemsize)
    # channel blocks are split into groups so that every thread has tasks; each group sums its own dB / dC slice
    groups = max(1, min(blocks, -(-2 * threads // max(batch, 1))))
    run = u.numel() > 0
    alloc = torch.empty if run else torch.zeros  # the kernel writes every element it is given
    du, ddelta = alloc(u.shape, dtype=sd), alloc(delta.shape, dtype=sd)
    dA = alloc(batch, K, E, N, dtype=sd)
    dB, dC = (torch.zeros(groups, batch, L, K, N, dtype=sd) for _ in range(2))
    dD, d_bias = (None if t is None else alloc(batch, K, E, dtype=sd) for t in (D, delta_bias))
    if run:
        inputs = in_state_dtype(sd, dy, u, delta, A, B, C, D, delta_bias)
        LIBRARY.call(f"selective_scan_backward_{'f64' if sd == torch.float64 else 'f32'}", *map(_pointer, inputs),
                     order.data_ptr(), *map(_pointer, (du, ddelta, dA, dB, dC, dD, d_bias)),
                     batch, L, K, E, N, int(delta_softplus), int(merge), groups, STATE_BUDGET_BYTES, threads)
    dA, dD, d_bias = (None if t is None else t.sum(0) for t in (dA, dD, d_bias))
    dB, dC = (t[0] if groups == 1 else t.sum(0) for t in (dB, dC))
    grads = (du, ddelta, dA, dB, dC, dD, d_bias)
    like = (u, delta, A, B, C, D, delta_bias)
    grads = [None if g is None else g.to(t.dtype) for g, t in zip(grads, like)]
    d_weight = None
    if delta_proj_weight is not None:
        grads[1], d_weight = project_delta_backward(ddelta, low_rank, delta_proj_weight)
    return (*grads, d_weight)
