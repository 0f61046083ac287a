"""The "cpu" backend of `depthwise_conv2d`: the C++/OpenMP kernel `kernels/cpu/depthwise_conv_cpu.cpp`, loaded with
ctypes through `native.NativeLibrary`. Half-precision inputs are widened to float32 here and outputs cast back. The
backward recomputes the pre-activation with the kernel and goes on as the reference's
(`depthwise_conv_ref.backward_from_preactivation`).
"""
import ctypes
from typing import Optional

import torch

from .depthwise_conv_ref import ACTIVATIONS, backward_from_preactivation
from .native import NativeLibrary
from .scan2d_ref import in_state_dtype, state_dtype


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        function = getattr(lib, f"depthwise_conv_forward_{suffix}")
        function.argtypes, function.restype = [ptr] * 4 + [i64] * 6 + [i32] * 3, i32


LIBRARY = NativeLibrary("cpu/depthwise_conv_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


_ENTRY = {torch.float32: "depthwise_conv_forward_f32", torch.float64: "depthwise_conv_forward_f64"}


def _forward(x, weight, bias, stride, activation, residual):
    """act(z) (or z for activation "none") in the state dtype, (batch, Ho, Wo, C)."""
    sd = state_dtype(x.dtype)
    (batch, H, W, C), k = x.shape, weight.shape[-1]
    out = torch.empty(batch, (H - 1) // stride + 1, (W - 1) // stride + 1, C, dtype=sd)
    if out.numel() > 0:
        x, weight, bias = in_state_dtype(sd, x, weight, bias)  # referenced until the call returns
        LIBRARY.call(_ENTRY[sd], x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(),
                     out.data_ptr(), batch, H, W, C, k, stride, ACTIVATIONS.index(activation), int(residual),
                     torch.get_num_threads())
    return out


def forward(x, weight, bias, stride, activation, residual):
    """(batch, Ho, Wo, C) in x's dtype; see `depthwise_conv_ref`."""
    out = _forward(x, weight, bias, stride, activation, residual)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def backward(dout, x, weight, bias, stride, activation, residual):
    """(dx, dweight, dbias); the pre-activation recomputed by the kernel."""
    z = _forward(x, weight, bias, stride, "none", residual)
    return backward_from_preactivation(dout, z, x, weight, bias, stride, activation, residual)
