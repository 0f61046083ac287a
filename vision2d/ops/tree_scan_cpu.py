"""The "cpu" backend of the tree scan: the C++/OpenMP kernel `kernels/cpu/tree_scan_cpu.cpp`, loaded with ctypes
through `native.NativeLibrary`. Half-precision inputs are widened to float32 (the kernel's type), outputs cast back.
It also builds trees (`build_tree`, edge weights included) for every device: the tree is built on the host, as in the
official code.
"""
import ctypes
from typing import Optional, Tuple

import torch
from torch import Tensor

from .native import NativeLibrary
from .tree_scan_ref import TREE_ERRORS


def _declare(lib: ctypes.CDLL):
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.tree_check.argtypes = [ptr, ptr, i64, i64]
    lib.tree_check.restype = i32
    for suffix in ("f32", "f64"):
        build = getattr(lib, f"tree_build_{suffix}")
        build.argtypes = [ptr] + [i64] * 4 + [ptr, ptr, i32]
        build.restype = i32
        forward = getattr(lib, f"tree_scan_forward_{suffix}")
        forward.argtypes = [ptr] * 5 + [i64] * 3 + [i32]
        forward.restype = i32
        selective = getattr(lib, f"tree_scan_selective_forward_{suffix}")
        selective.argtypes = [ptr] * 8 + [i64] * 3 + [i32]
        selective.restype = i32
        readout_fn = getattr(lib, f"tree_scan_readout_{suffix}")
        readout_fn.argtypes = [ptr] * 3 + [i64] + [ptr] * 4 + [ctypes.c_double] + [ptr] * 2 + [ctypes.c_double, ptr] + \
            [i64] * 2 + [i32]
        readout_fn.restype = i32
        backward = getattr(lib, f"tree_scan_backward_{suffix}")
        backward.argtypes = [ptr] * 8 + [i64] * 3 + [i32]
        backward.restype = i32


LIBRARY = NativeLibrary("cpu/tree_scan_cpu.cpp", _declare)


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the kernel can run on `device` (CPU tensors; builds the kernel on first call), else why not."""
    if device.type != "cpu":
        return f"the cpu backend runs on CPU tensors only, not {device.type}"
    return LIBRARY.unavailable_reason()


def build_tree(guide: Tensor) -> Tuple[Tensor, Tensor]:
    """(order, parent) (B, H*W) int64 on guide's device, as `tree_scan_ref.build_tree`; built on the host, edge
    weights included, from the guide in channels-last memory (no copy when it is already so laid out)."""
    batch, channels, height, width = guide.shape
    kd = _kernel_dtype(guide.dtype)
    pixels = guide.permute(0, 2, 3, 1).to("cpu", kd).contiguous()  # (B, H, W, C)
    order = torch.empty(batch, height * width, dtype=torch.int64)
    parent = torch.empty_like(order)
    if order.numel() > 0:
        LIBRARY.call(f"tree_build_{_suffix(kd)}", pixels.data_ptr(), batch, height, width, channels, order.data_ptr(),
                     parent.data_ptr(), torch.get_num_threads())
    return order.to(guide.device), parent.to(guide.device)


def _checked_tree(order: Tensor, parent: Tensor) -> Tuple[Tensor, Tensor]:
    """order and parent contiguous; ValueError (`tree_scan_ref.TREE_ERRORS`) unless they describe a tree, checked
    natively (the kernels index with both)."""
    order, parent = order.contiguous(), parent.contiguous()
    if order.numel() > 0:
        code = LIBRARY.load().tree_check(order.data_ptr(), parent.data_ptr(), *order.shape)
        if code == -1:
            raise MemoryError("tree_scan: out of memory checking the tree")
        if code != 0:
            raise ValueError(TREE_ERRORS[code])
    return order, parent


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """y (B, L, D) in x's dtype; x, decay (B, L, D), order, parent (B, L) int64."""
    kd = _kernel_dtype(x.dtype)
    x_, decay_ = x.to(kd).contiguous(), decay.to(kd).contiguous()
    order, parent = _checked_tree(order, parent)
    y = torch.empty(x.shape, dtype=kd)
    if y.numel() > 0:
        LIBRARY.call(f"tree_scan_forward_{_suffix(kd)}", x_.data_ptr(), decay_.data_ptr(), order.data_ptr(),
                     parent.data_ptr(), y.data_ptr(), *x.shape, torch.get_num_threads())
    return y.to(x.dtype)


def selective_forward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor], order: Tensor,
                      parent: Tensor) -> Tensor:
    """The selective form (`tree_scan_ref.selective_tree_scan_ref`) in one kernel: y (B, L, D) in x's dtype."""
    kd = _kernel_dtype(x.dtype)
    x_, delta_, A_, B_ = (t.to(kd).contiguous() for t in (x, delta, A, B))
    bias = None if delta_bias is None else delta_bias.to(kd).contiguous()
    order, parent = _checked_tree(order, parent)
    y = torch.empty(x.shape, dtype=kd)
    if y.numel() > 0:
        LIBRARY.call(f"tree_scan_selective_forward_{_suffix(kd)}", x_.data_ptr(), delta_.data_ptr(), A_.data_ptr(),
                     B_.data_ptr(), None if bias is None else bias.data_ptr(), order.data_ptr(), parent.data_ptr(),
                     y.data_ptr(), *x.shape, torch.get_num_threads())
    return y.to(x.dtype)


def readout(y: Tensor, x: Tensor, z: Tensor, C: Tensor, D: Tensor, h_norm_weight: Tensor, h_norm_bias: Tensor,
            h_norm_eps: float, out_norm_weight: Tensor, out_norm_bias: Tensor, out_norm_eps: float) -> Tensor:
    """`tree_scan_ref.readout_ref` in one pass over the vertices; (B, L, D) in y's dtype. z may be a channel slice
    of a wider tensor (its vertices equally spaced), as GrootV's gate is."""
    kd = _kernel_dtype(y.dtype)
    batch, count, channels = y.shape
    y_, x_, C_, D_, w1, b1, w2, b2 = (t.to(kd).contiguous() for t in (y, x, C, D, h_norm_weight, h_norm_bias,
                                                                      out_norm_weight, out_norm_bias))
    z_ = z.to(kd)
    if z_.stride(-1) != 1 or z_.stride(0) != count * z_.stride(1):
        z_ = z_.contiguous()
    out = torch.empty(y.shape, dtype=kd)
    if out.numel() > 0:
        LIBRARY.call(f"tree_scan_readout_{_suffix(kd)}", y_.data_ptr(), x_.data_ptr(), z_.data_ptr(), z_.stride(1),
                     C_.data_ptr(), D_.data_ptr(), w1.data_ptr(), b1.data_ptr(), h_norm_eps, w2.data_ptr(),
                     b2.data_ptr(), out_norm_eps, out.data_ptr(), batch * count, channels, torch.get_num_threads())
    return out.to(y.dtype)


def backward(dy: Tensor, x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, y: Tensor):
    """(dx, ddecay) in x's and decay's dtypes; y is the forward's output."""
    kd = _kernel_dtype(x.dtype)
    dy_, x_, decay_, y_ = (t.to(kd).contiguous() for t in (dy, x, decay, y))
    order, parent = _checked_tree(order, parent)
    dx, ddecay = torch.empty(x.shape, dtype=kd), torch.empty(x.shape, dtype=kd)
    if dx.numel() > 0:
        LIBRARY.call(f"tree_scan_backward_{_suffix(kd)}", dy_.data_ptr(), x_.data_ptr(), decay_.data_ptr(),
                     order.data_ptr(), parent.data_ptr(), y_.data_ptr(), dx.data_ptr(), ddecay.data_ptr(), *x.shape,
                     torch.get_num_threads())
    return dx.to(x.dtype), ddecay.to(decay.dtype)
