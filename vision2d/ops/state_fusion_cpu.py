"""The "cpu" backend of `state_fusion`: the C++/OpenMP kernel `kernels/cpu/state_fusion_cpu.cpp` (which also holds
the `state_scan` kernel and the fused forward of `state_scan_fusion`, `scan_fusion_forward` here), loaded with ctypes
through `native.NativeLibrary`. Half-precision inputs are widened to float32 here and outputs cast back.
"""
import ctypes
from typing import Optional

import torch

from .native import NativeLibrary
from .scan2d_ref import state_dtype


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {"state_scan_forward": [ptr] * 6 + [i64] * 4 + [i32] * 2,
                  "state_scan_backward": [ptr] * 12 + [i64] * 4 + [i32] * 2,
                  "state_fusion_forward": [ptr] * 3 + [i64] * 5 + [i32],
                  "state_fusion_backward": [ptr] * 5 + [i64] * 5 + [i32],
                  "state_scan_fusion_forward": [ptr] * 10 + [ctypes.c_double, i32] + [ptr] * 2 + [i64] * 6
                  + [i32] * 2}
    for name, argtypes in signatures.items():
        for suffix in ("f32", "f64"):
            function = getattr(lib, f"{name}_{suffix}")
            function.argtypes, function.restype = argtypes, i32


LIBRARY = NativeLibrary("cpu/state_fusion_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def suffix(dtype: torch.dtype) -> str:
    """The kernel entry point suffix for the state dtype `dtype`."""
    return "f64" if dtype == torch.float64 else "f32"


def pointer(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _weight_by_tap(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C, k, k) -> (k * k, C) contiguous in `dtype`: one tap's weights are consecutive channels."""
    return weight.to(dtype).reshape(weight.shape[0], -1).t().contiguous()


def forward(x, weight):
    """(batch, H, W, C), (C, k, k) -> (batch, H, W, C) in x's dtype; see `state_fusion_ref`."""
    sd = state_dtype(x.dtype)
    out = torch.empty(x.shape, dtype=sd)
    if out.numel() > 0:
        inputs = x.to(sd).contiguous(), _weight_by_tap(weight, sd)  # referenced until the call returns
        LIBRARY.call(f"state_fusion_forward_{suffix(sd)}", *map(pointer, inputs), out.data_ptr(), *x.shape,
                     weight.shape[-1], torch.get_num_threads())
    return out.to(x.dtype)


def backward(dout, x, weight):
    """(dx, dweight) in x's and weight's dtypes."""
    sd = state_dtype(x.dtype)
    (batch, H, W, C), k = x.shape, weight.shape[-1]
    dx = torch.empty(x.shape, dtype=sd)
    dweight = torch.zeros(batch, k * k, C, dtype=sd)
    if dx.numel() > 0:
        inputs = dout.to(sd).contiguous(), x.to(sd).contiguous(), _weight_by_tap(weight, sd)
        LIBRARY.call(f"state_fusion_backward_{suffix(sd)}", *map(pointer, inputs), dx.data_ptr(), dweight.data_ptr(),
                     batch, H, W, C, k, torch.get_num_threads())
    dweight = dweight.sum(0).t().reshape(weight.shape)
    return dx.to(x.dtype), dweight.to(weight.dtype)


def scan_fusion_forward(u, delta, A, B, C, D, delta_bias, weight, delta_softplus, norm_weight, norm_bias, norm_eps,
                        gate):
    """`state_scan_fusion`'s output (batch, H, W, E) in u's dtype from one kernel call (the states stay in a buffer of
    one channel block's states); arguments as in `state_scan_fusion`."""
    sd = state_dtype(u.dtype)
    (batch, H, W, E), N, k = u.shape, A.shape[1], weight.shape[-1]
    out = torch.empty(u.shape, dtype=sd)
    if out.numel() > 0:
        inputs = [None if t is None else t.to(sd).contiguous()
                  for t in (u, delta, A, B, C, D, delta_bias, norm_weight, norm_bias, gate)]
        inputs.insert(7, _weight_by_tap(weight, sd))  # all referenced until the call returns
        LIBRARY.call(f"state_scan_fusion_forward_{suffix(sd)}", *map(pointer, inputs[:10]),
                     ctypes.c_double(0.0 if norm_eps is None else norm_eps), int(norm_eps is not None),
                     pointer(inputs[10]), out.data_ptr(), batch, H, W, E, N, k, int(delta_softplus),
                     torch.get_num_threads())
    return out.to(u.dtype)
