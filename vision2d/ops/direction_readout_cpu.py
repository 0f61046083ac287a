"""The "cpu" backend of `direction_readout`: the C++/OpenMP kernel `kernels/cpu/direction_readout_cpu.cpp`, loaded
with ctypes through `native.NativeLibrary` (one pass over y). Half-precision inputs are widened to float32 here and
outputs cast back."""
import ctypes
from typing import Optional

import torch

from .native import NativeLibrary
from .scan2d_ref import in_state_dtype, state_dtype


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suffix in ("f32", "f64"):
        readout = getattr(lib, f"direction_readout_{suffix}")
        readout.argtypes, readout.restype = [ptr, i64] + [ptr] * 3 + [f64] + [ptr] * 2 + [i64] * 4 + [i32], i32


LIBRARY = NativeLibrary("cpu/direction_readout_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def _pointers(dtype, y, *tensors):
    """(tensors in `dtype` kept referenced by the caller, y's batch stride, their data pointers (None for absent
    ones)): y as it is when its pixels, directions and channels are dense (the first L pixels of a padded scan output,
    read in place), the others contiguous"""
    if y.dtype != dtype or y.stride()[1:] != (y.shape[2] * y.shape[3], y.shape[3], 1) or y.stride(0) < y[0].numel():
        y = y.to(dtype).contiguous()
    kept = [y] + in_state_dtype(dtype, *tensors)
    return kept, y.stride(0), [None if t is None else t.data_ptr() for t in kept]


def forward(y, gate, z, norm_weight, norm_bias, eps):
    """(batch, L, E) in y's dtype; see `direction_readout_ref.readout`."""
    sd = state_dtype(y.dtype)
    batch, L, K, E = y.shape
    out = torch.empty(batch, L, E, dtype=sd)
    if out.numel() > 0:
        kept, stride, pointers = _pointers(sd, y, gate, norm_weight, norm_bias, z)
        LIBRARY.call(f"direction_readout_{'f64' if sd == torch.float64 else 'f32'}", pointers[0], stride,
                     *pointers[1:4], float(eps), pointers[4], out.data_ptr(), batch, L, K, E, torch.get_num_threads())
    return out.to(y.dtype)
