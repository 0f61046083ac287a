"""Triton kernels of the tree scan's propagation (the "triton" backend); trees are built on the host by the compiled
CPU kernel (`tree_scan_cpu.build_tree`), as the official code builds them.

Same arguments and math as `tree_scan_ref`; the selective form computes its inputs with PyTorch, then runs these
kernels. One program per (batch item, block of BLOCK_D channels) sweeps the vertices in breadth-first order, the
channels of a vertex one vector: leaves to root (up[parent] += w * up), then root to leaves in place. Tensors are vertex-major (B, L, D): a vertex's channels are contiguous.
Each sweep step reads what an earlier step of the same program wrote, through global memory, so the loops must not be
software-pipelined (num_stages=1). fp32, bf16 and fp16 inputs run in fp32, fp64 in fp64.

Devices. CUDA tensors; CPU tensors only when the kernels were defined under the Triton interpreter, i.e. when
TRITON_INTERPRET=1 was set before this module was imported.
"""
from typing import Optional

import torch
from torch import Tensor

from . import tree_scan_cpu, tree_scan_ref

try:
    import triton
    import triton.language as tl
except ImportError as e:  # the backend reports itself unavailable
    triton = None
    _TRITON_IMPORT_ERROR = e
else:
    _TRITON_IMPORT_ERROR = None

MAX_BLOCK_D = 64


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of `device`, else why not."""
    if triton is None:
        return f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    interpreted = not isinstance(_tree_scan_fwd_kernel, triton.runtime.JITFunction)
    if device.type == "cuda" or (device.type == "cpu" and interpreted):
        return tree_scan_cpu.LIBRARY.unavailable_reason()  # builds the trees
    if device.type == "cpu":
        return ("CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before "
                "vision2d.ops.tree_scan_triton is imported")
    return f"Triton kernels need CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got {device.type}"


if triton is not None:
    @triton.jit
    def _leaves_to_root(src_ptr, dst_ptr, w_ptr, order_ptr, parent_ptr, L, D, d, mask):
        """dst = src, then dst[parent(v)] += w[v] * dst[v] for v in reverse breadth-first order."""
        for u in range(0, L):
            tl.store(dst_ptr + u * D + d, tl.load(src_ptr + u * D + d, mask=mask), mask=mask)
        for j in range(1, L):
            v = tl.load(order_ptr + L - j)
            p = tl.load(parent_ptr + v)
            up_v = tl.load(dst_ptr + v * D + d, mask=mask)
            w_v = tl.load(w_ptr + v * D + d, mask=mask)
            up_p = tl.load(dst_ptr + p * D + d, mask=mask)
            tl.store(dst_ptr + p * D + d, up_p + w_v * up_v, mask=mask)

    @triton.jit
    def _root_to_leaves(y_ptr, w_ptr, order_ptr, parent_ptr, L, D, d, mask):
        """In place: y[v] = (1 - w[v]^2) y[v] + w[v] y[parent(v)] in breadth-first order (the root keeps y)."""
        for i in range(1, L):
            v = tl.load(order_ptr + i)
            p = tl.load(parent_ptr + v)
            up_v = tl.load(y_ptr + v * D + d, mask=mask)
            w_v = tl.load(w_ptr + v * D + d, mask=mask)
            y_p = tl.load(y_ptr + p * D + d, mask=mask)
            tl.store(y_ptr + v * D + d, (1 - w_v * w_v) * up_v + w_v * y_p, mask=mask)

    @triton.jit
    def _tree_scan_fwd_kernel(x_ptr, w_ptr, order_ptr, parent_ptr, y_ptr, L, D, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = d < D
        base = b.to(tl.int64) * L * D
        order_ptr += b * L
        parent_ptr += b * L
        _leaves_to_root(x_ptr + base, y_ptr + base, w_ptr + base, order_ptr, parent_ptr, L, D, d, mask)
        _root_to_leaves(y_ptr + base, w_ptr + base, order_ptr, parent_ptr, L, D, d, mask)

    @triton.jit
    def _tree_scan_bwd_kernel(dy_ptr, x_ptr, w_ptr, order_ptr, parent_ptr, y_ptr, up_x_ptr, up_dy_ptr, dx_ptr,
                              dw_ptr, L, D, BLOCK_D: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = d < D
        base = b.to(tl.int64) * L * D
        order_ptr += b * L
        parent_ptr += b * L
        dy_ptr += base
        x_ptr += base
        w_ptr += base
        y_ptr += base
        up_x_ptr += base
        up_dy_ptr += base
        dx_ptr += base
        dw_ptr += base
        _leaves_to_root(x_ptr, up_x_ptr, w_ptr, order_ptr, parent_ptr, L, D, d, mask)
        _leaves_to_root(dy_ptr, up_dy_ptr, w_ptr, order_ptr, parent_ptr, L, D, d, mask)
        for u in range(0, L):
            tl.store(dx_ptr + u * D + d, tl.load(up_dy_ptr + u * D + d, mask=mask), mask=mask)
        _root_to_leaves(dx_ptr, w_ptr, order_ptr, parent_ptr, L, D, d, mask)
        root = tl.load(order_ptr)
        tl.store(dw_ptr + root * D + d, tl.zeros([BLOCK_D], dtype=dw_ptr.dtype.element_ty), mask=mask)
        for i in range(1, L):
            c = tl.load(order_ptr + i)
            p = tl.load(parent_ptr + c)
            w_c = tl.load(w_ptr + c * D + d, mask=mask)
            up_x_c = tl.load(up_x_ptr + c * D + d, mask=mask)
            up_dy_c = tl.load(up_dy_ptr + c * D + d, mask=mask)
            dx_p = tl.load(dx_ptr + p * D + d, mask=mask)
            y_p = tl.load(y_ptr + p * D + d, mask=mask)
            tl.store(dw_ptr + c * D + d, up_x_c * (dx_p - w_c * up_dy_c) + up_dy_c * (y_p - w_c * up_x_c), mask=mask)


def _check_tree_on_host(order: Tensor, parent: Tensor):
    """The tree check for CPU tensors (the interpreter); CUDA trees come from build_tree and are not re-read."""
    if order.device.type == "cpu":
        tree_scan_ref.check_tree(order, parent)


def build_tree(guide: Tensor):
    return tree_scan_cpu.build_tree(guide)


def _launch(kernel, batch: int, channels: int, count: int, *tensors):
    block = min(MAX_BLOCK_D, triton.next_power_of_2(max(channels, 1)))
    if batch * channels * count > 0:
        kernel[(batch, triton.cdiv(channels, block))](*tensors, count, channels, BLOCK_D=block, num_warps=1,
                                                       num_stages=1)


def forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """y (B, L, D) in x's dtype."""
    _check_tree_on_host(order, parent)
    kd = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, count, channels = x.shape
    x_, w_ = x.to(kd).contiguous(), decay.to(kd).contiguous()
    y = torch.empty_like(x_)
    _launch(_tree_scan_fwd_kernel, batch, channels, count, x_, w_, order.contiguous(), parent.contiguous(), y)
    return y.to(x.dtype)


def backward(dy: Tensor, x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, y: Tensor):
    """(dx, ddecay) in x's and decay's dtypes."""
    _check_tree_on_host(order, parent)
    kd = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, count, channels = x.shape
    dy_, x_, w_, y_ = (t.to(kd).contiguous() for t in (dy, x, decay, y))
    up_x, up_dy, dx, dw = (torch.empty_like(x_) for _ in range(4))
    _launch(_tree_scan_bwd_kernel, batch, channels, count, dy_, x_, w_, order.contiguous(), parent.contiguous(), y_,
            up_x, up_dy, dx, dw)
    return dx.to(x.dtype), dw.to(decay.dtype)


def selective_forward(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor], order: Tensor,
                      parent: Tensor) -> Tensor:
    """The selective form: its inputs (softplus, decays, dt B x) by PyTorch, the propagation by the kernel."""
    return tree_scan_ref.selective_forward(x, delta, A, B, delta_bias, order, parent, scan=forward)


def readout(*args) -> Tensor:
    """The read-out by PyTorch (`tree_scan_ref.readout_ref`)."""
    return tree_scan_ref.readout_ref(*args)
