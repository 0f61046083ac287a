"""The "cpu" backend of `selective_scan_2pass`: the C++/OpenMP kernel `kernels/cpu/selective_scan_2pass_cpu.cpp`,
loaded with ctypes through `native.NativeLibrary`. Half-precision inputs are widened to float32 here (the kernel's
state type), and outputs cast back.
"""
import ctypes
from typing import Optional

import torch

from .native import NativeLibrary
from .scan2d_ref import in_state_dtype, state_dtype
from .selective_scan_2pass_ref import NUM_DIRECTIONS

# per thread: the backward recomputes all of a channel block's state rows when they fit, else segments of rows
# restarted from checkpointed rows (one more forward sweep)
STATE_BUDGET_BYTES = 4 << 20


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"selective_scan_2pass_forward_{suffix}")
        forward.argtypes = [ptr] * 8 + [i64] * 5 + [i32] * 3
        forward.restype = i32
        backward = getattr(lib, f"selective_scan_2pass_backward_{suffix}")
        backward.argtypes = [ptr] * 15 + [i64] * 5 + [i32] * 2 + [i64, i64, i32]
        backward.restype = i32


LIBRARY = NativeLibrary("cpu/selective_scan_2pass_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def _pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge):
    """y in u's dtype, (batch, L, E) if `merge` else (batch, L, 4, E); arguments as in `selective_scan_2pass_ref`."""
    sd = state_dtype(u.dtype)
    (batch, L, E), N = u.shape, A.shape[2]
    y = torch.empty((batch, L, E) if merge else (batch, L, NUM_DIRECTIONS, E), dtype=sd)
    if y.numel() > 0:
        inputs = in_state_dtype(sd, u, delta, A, B, C, D, delta_bias)
        LIBRARY.call(f"selective_scan_2pass_forward_{_suffix(sd)}", *map(_pointer, inputs), y.data_ptr(), batch,
                     height, width, E, N, int(delta_softplus), int(merge), torch.get_num_threads())
    return y.to(u.dtype)


def backward(dy, u, delta, A, B, C, D, delta_bias, delta_softplus, height, width, merge):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's dtype (None for an absent D / delta_bias)."""
    sd = state_dtype(u.dtype)
    (batch, L, E), (K, _, N) = u.shape, A.shape
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
        LIBRARY.call(f"selective_scan_2pass_backward_{_suffix(sd)}", *map(_pointer, inputs),
                     *map(_pointer, (du, ddelta, dA, dB, dC, dD, d_bias)), batch, height, width, E, N,
                     int(delta_softplus), int(merge), groups, STATE_BUDGET_BYTES, threads)
    dA, dD, d_bias = (None if t is None else t.sum(0) for t in (dA, dD, d_bias))
    dB, dC = (t[0] if groups == 1 else t.sum(0) for t in (dB, dC))
    grads = (du, ddelta, dA, dB, dC, dD, d_bias)
    like = (u, delta, A, B, C, D, delta_bias)
    return tuple(None if g is None else g.to(t.dtype) for g, t in zip(grads, like))
