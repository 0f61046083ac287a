"""The "cpu" backend of `selective_scan_2d`: the C++/OpenMP kernel `kernels/cpu/scan2d_cpu.cpp`, loaded with ctypes
through `native.NativeLibrary` (built on first use into the verified kernel cache). Half-precision inputs are widened
to float32 here (the kernel's state type), and outputs cast back.
"""
import ctypes
from typing import Optional

import torch

from .native import NativeLibrary
from .scan2d_ref import state_dtype

# per thread: the backward recomputes all of a channel block's states when they fit, else segments of rows restarted
# from checkpointed rows (one more forward pass)
STATE_BUDGET_BYTES = 16 << 20


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"scan2d_forward_{suffix}")
        forward.argtypes = [ptr] * 10 + [i64] * 5 + [i32] * 3
        forward.restype = i32
        backward = getattr(lib, f"scan2d_backward_{suffix}")
        backward.argtypes = [ptr] * 19 + [i64] * 5 + [i32] * 2 + [i64, i32]
        backward.restype = i32


LIBRARY = NativeLibrary("cpu/scan2d_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def _pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, *args):
    LIBRARY.call(f"{name}_{'f64' if dtype == torch.float64 else 'f32'}", *args)


def forward(u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse):
    """y (B, H, W, E) in u's dtype; inputs contiguous and channels-last as in `scan2d_ref`."""
    sd = state_dtype(u.dtype)
    inputs = [t.to(sd).contiguous() for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    d = None if D is None else D.to(sd).contiguous()
    y = torch.empty(u.shape, dtype=sd)
    if y.numel() > 0:
        _call("scan2d_forward", sd, *map(_pointer, inputs), _pointer(d), y.data_ptr(), *u.shape, A_t.shape[1],
              int(delta_softplus), int(reverse), torch.get_num_threads())
    return y.to(u.dtype)


def backward(dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C, D, delta_softplus, reverse):
    """(du, ddelta_t, ddelta_l, dA_t, dA_l, dB_t, dB_l, dC, dD), each in its input's dtype (dD None without D)."""
    sd = state_dtype(u.dtype)
    inputs = [t.to(sd).contiguous() for t in (dy, u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    d = None if D is None else D.to(sd).contiguous()
    alloc = torch.empty if u.numel() > 0 else torch.zeros  # the kernel writes every element
    grads = [alloc(t.shape, dtype=sd) for t in (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C)]
    dd = None if D is None else alloc(D.shape, dtype=sd)
    if u.numel() > 0:
        _call("scan2d_backward", sd, *map(_pointer, inputs), _pointer(d), *map(_pointer, grads), _pointer(dd),
              *u.shape, A_t.shape[1], int(delta_softplus), int(reverse), STATE_BUDGET_BYTES, torch.get_num_threads())
    outs = [g.to(t.dtype) for g, t in zip(grads, (u, delta_t, delta_l, A_t, A_l, B_t, B_l, C))]
    return (*outs, None if D is None else dd.to(D.dtype))
