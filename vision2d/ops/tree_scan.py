"""GrootV's tree scan as `torch.library` custom ops: `build_tree` (minimum spanning tree of a guide map, breadth-first
order from pixel 0), `tree_scan` (leaves-to-root then root-to-leaves propagation over it), `selective_tree_scan`
(GrootV's mixer: the propagated input and the decays made from x, delta, A and B inside the op) and
`tree_scan_readout` (GrootV's read-out after the scan: two LayerNorms, C, D and the SiLU gate in one pass);
`tree_scan_2d` and `selective_tree_scan_2d` build the tree and scan channels-last (B, H, W, D) maps. See
`tree_scan_ref` for the math and the exact tie rules.

Backends (modules with `unavailable_reason(device)`, `build_tree(guide)`, `forward(x, decay, order, parent)`,
`selective_forward(x, delta, A, B, delta_bias, order, parent)`, `readout(...)` and
`backward(dy, x, decay, order, parent, y)`; the selective form's backward is the plain backward and the chain rule of
`tree_scan_ref.selective_inputs_backward`), chosen by `backends.OpBackends`:
    "reference"  pure PyTorch and Python (`tree_scan_ref`), any device; backward written out
    "cpu"        compiled C++/OpenMP kernel `kernels/cpu/tree_scan_cpu.cpp` (CPU tensors; the selective form and the
                 read-out each in one kernel)
    "triton"     Triton propagation kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1); its trees are
                 built by the compiled CPU kernel on the host, as the official code builds them; the selective
                 form's inputs and the read-out by PyTorch
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import tree_scan_ref
from .backends import FLOAT_DTYPES, OpBackends, backward_op_fake, backward_op_grads, call_op, custom_op

TREE_SCAN = OpBackends("tree_scan", {"reference": "vision2d.ops.tree_scan_ref", "cpu": "vision2d.ops.tree_scan_cpu",
                                     "triton": "vision2d.ops.tree_scan_triton"})
BACKENDS = TREE_SCAN.names


@custom_op("vision2d::tree_build")
def _build_op(guide: Tensor, backend: str) -> Tuple[Tensor, Tensor]:
    return TREE_SCAN.module(TREE_SCAN.resolve(guide.device, backend)).build_tree(guide)


@_build_op.register_fake
def _(guide, backend):
    shape = (guide.shape[0], guide.shape[2] * guide.shape[3])
    return guide.new_empty(shape, dtype=torch.int64), guide.new_empty(shape, dtype=torch.int64)


@custom_op("vision2d::tree_scan")
def _scan_op(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, backend: str) -> Tensor:
    return TREE_SCAN.forward(backend, x, decay, order, parent)


@_scan_op.register_fake
def _(x, decay, order, parent, backend):
    return torch.empty_like(x)


@torch.library.custom_op("vision2d::tree_scan_backward", mutates_args=())
def _scan_backward_op(dy: Tensor, x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, y: Tensor,
                      backend: str) -> Tuple[Tensor, Tensor]:
    return tuple(backward_op_grads(TREE_SCAN.backward(backend, dy.contiguous(), x, decay, order, parent, y), x))


@_scan_backward_op.register_fake
def _(dy, x, decay, order, parent, y, backend):
    return tuple(backward_op_fake((x, decay), x))


def _setup_context(ctx, inputs, output):
    x, decay, order, parent, backend = inputs
    ctx.save_for_backward(x, decay, order, parent, output)
    ctx.backend = backend


def _backward(ctx, dy):
    x, decay, order, parent, y = ctx.saved_tensors
    dx, ddecay = _scan_backward_op(dy, x, decay, order, parent, y, ctx.backend)
    return dx, ddecay, None, None, None


_scan_op.register_autograd(_backward, setup_context=_setup_context)


@custom_op("vision2d::selective_tree_scan")
def _selective_op(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Optional[Tensor], order: Tensor,
                  parent: Tensor, backend: str) -> Tensor:
    module = TREE_SCAN.module(TREE_SCAN.resolve(x.device, backend))
    return module.selective_forward(x, delta, A, B, delta_bias, order, parent)


@_selective_op.register_fake
def _(x, delta, A, B, delta_bias, order, parent, backend):
    return torch.empty_like(x)


def _selective_setup_context(ctx, inputs, output):
    x, delta, A, B, delta_bias, order, parent, backend = inputs
    ctx.save_for_backward(x, delta, A, B, order, parent, output)
    ctx.delta_bias = delta_bias  # a parameter: kept by reference, not versioned
    ctx.backend = backend


def _selective_backward(ctx, dy):
    x, delta, A, B, order, parent, y = ctx.saved_tensors
    u, decay, _ = tree_scan_ref.selective_inputs(x, delta, A, B, ctx.delta_bias)
    du, ddecay = _scan_backward_op(dy, u, decay, order, parent, y, ctx.backend)
    dx, ddelta, dA, dB, dbias = tree_scan_ref.selective_inputs_backward(du, ddecay, x, delta, A, B, ctx.delta_bias)
    return dx, ddelta, dA, dB, dbias, None, None, None


_selective_op.register_autograd(_selective_backward, setup_context=_selective_setup_context)


@custom_op("vision2d::tree_scan_readout")
def _readout_op(y: Tensor, x: Tensor, z: Tensor, C: Tensor, D: Tensor, h_norm_weight: Tensor, h_norm_bias: Tensor,
                h_norm_eps: float, out_norm_weight: Tensor, out_norm_bias: Tensor, out_norm_eps: float,
                backend: str) -> Tensor:
    module = TREE_SCAN.module(TREE_SCAN.resolve(y.device, backend))
    return module.readout(y, x, z, C, D, h_norm_weight, h_norm_bias, h_norm_eps, out_norm_weight, out_norm_bias,
                          out_norm_eps)


@_readout_op.register_fake
def _(y, x, z, C, D, h_norm_weight, h_norm_bias, h_norm_eps, out_norm_weight, out_norm_bias, out_norm_eps, backend):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def build_tree(guide: Tensor, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Minimum spanning tree of the 4-neighbour grid of guide (B, C, H, W), weighted exp(-cosine similarity).

    Returns (order, parent), (B, H*W) int64 on guide's device: the vertices (v = h * W + w) in breadth-first order
    from the root 0, and each vertex's parent (the root's is 0). Not differentiable (the official tree is built
    under no_grad).
    """
    if not isinstance(guide, Tensor):
        raise TypeError(f"build_tree: guide must be a torch.Tensor, got {type(guide).__name__}")
    if guide.dim() != 4:
        raise ValueError(f"build_tree: guide must be 4-D (B, C, H, W), got shape {tuple(guide.shape)}")
    if guide.dtype not in FLOAT_DTYPES:
        raise TypeError(f"build_tree: guide has dtype {guide.dtype}; expected one of {FLOAT_DTYPES}")
    if guide.shape[1] == 0:
        raise ValueError("build_tree: guide has no channels, so no similarities to build a tree from")
    return call_op(_build_op, guide.detach(), TREE_SCAN.check_name(backend))  # any layout (channels-last: no copy)


def _check_scan_inputs(x, decay, order, parent, op="tree_scan", decay_name="decay"):
    """x and decay (or delta) (B, L, D) of one float dtype, order and parent (B, L) int64; the backends check that
    order and parent describe a tree (`tree_scan_ref.check_tree`, natively in the cpu backend)."""
    for name, t in {"x": x, decay_name: decay, "order": order, "parent": parent}.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be 3-D (B, L, D), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES or decay.dtype != x.dtype:
        raise TypeError(f"{op}: x and {decay_name} must share one float dtype of {FLOAT_DTYPES}, got {x.dtype} and "
                        f"{decay.dtype}")
    if decay.shape != x.shape:
        raise ValueError(f"{op}: {decay_name} must have x's shape {tuple(x.shape)}, got {tuple(decay.shape)}")
    for name, t in dict(order=order, parent=parent).items():
        if t.dtype != torch.int64:
            raise TypeError(f"{op}: {name} must be int64 (from build_tree), got {t.dtype}")
        if tuple(t.shape) != (x.shape[0], x.shape[1]):
            raise ValueError(f"{op}: {name} must be (B, L) = {(x.shape[0], x.shape[1])}, got {tuple(t.shape)}")


def tree_scan(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, backend: Optional[str] = None) -> Tensor:
    """Propagate x over the tree: y[v] = sum over u of x[u] * prod of decay along the tree path u..v.

    x, decay: (B, L, D) vertex-major (channels last) of one float dtype (fp16/bf16 computed in fp32); decay[b, v, d]
    scales the edge from v to its parent (the root's is unused). order, parent: (B, L) int64 from `build_tree`.
    Returns y (B, L, D) in x's dtype. Differentiable in x and decay.
    """
    _check_scan_inputs(x, decay, order, parent)
    return call_op(_scan_op, x.contiguous(), decay.contiguous(), order.contiguous(), parent.contiguous(),
                   TREE_SCAN.check_name(backend))


def selective_tree_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, order: Tensor, parent: Tensor,
                        delta_bias: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """`tree_scan` of u = dt * B * x with decays exp(dt * A), dt = softplus(delta + delta_bias) (GrootV's mixer,
    d_state 1), the elementwise work done inside the op.

    x, delta: (B, L, D) vertex-major, one float dtype (fp16/bf16 computed in fp32); A: (D,) (negative for decays
    below 1); B: (B, L), one input scale per vertex; delta_bias: (D,) or None; A, B, delta_bias of x's dtype.
    order, parent: (B, L) int64 from `build_tree`. Returns y (B, L, D) in x's dtype. Differentiable in x, delta, A,
    B and delta_bias.
    """
    _check_scan_inputs(x, delta, order, parent, "selective_tree_scan", "delta")
    batch, count, channels = x.shape
    for name, t, shape in (("A", A, (channels,)), ("B", B, (batch, count)), ("delta_bias", delta_bias, (channels,))):
        if t is None and name == "delta_bias":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"selective_tree_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != x.device or t.dtype != x.dtype:
            raise TypeError(f"selective_tree_scan: {name} must be a {x.dtype} tensor on {x.device} like x, got "
                            f"{t.dtype} on {t.device}")
        if tuple(t.shape) != shape:
            raise ValueError(f"selective_tree_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    return call_op(_selective_op, x.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(),
                   None if delta_bias is None else delta_bias.contiguous(), order.contiguous(), parent.contiguous(),
                   TREE_SCAN.check_name(backend))


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def tree_scan_2d(x: Tensor, decay: Tensor, guide: Tensor, backend: Optional[str] = None) -> Tensor:
    """`tree_scan` of channels-last maps x, decay (B, H, W, D) over the tree `build_tree` makes of guide (B, H, W, C)
    (channels last too); returns y (B, H, W, D)."""
    if x.dim() != 4 or guide.dim() != 4 or x.shape[:3] != guide.shape[:3]:
        raise ValueError(f"tree_scan_2d: x (B, H, W, D) and guide (B, H, W, C) must share B, H, W; got "
                         f"{tuple(x.shape)} and {tuple(guide.shape)}")
    order, parent = build_tree(guide.permute(0, 3, 1, 2), backend)
    return tree_scan(x.flatten(1, 2), decay.flatten(1, 2), order, parent, backend).view_as(x)


@torch.jit.ignore  # TorchScript'ed models call it as Python (it validates with Python containers)
def selective_tree_scan_2d(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, guide: Tensor,
                           delta_bias: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """`selective_tree_scan` of channels-last maps x, delta (B, H, W, D) and B (B, H, W) over the tree `build_tree`
    makes of guide (B, H, W, C) (channels last too); returns y (B, H, W, D)."""
    if x.dim() != 4 or guide.dim() != 4 or x.shape[:3] != guide.shape[:3]:
        raise ValueError(f"selective_tree_scan_2d: x (B, H, W, D) and guide (B, H, W, C) must share B, H, W; got "
                         f"{tuple(x.shape)} and {tuple(guide.shape)}")
    order, parent = build_tree(guide.permute(0, 3, 1, 2), backend)
    return selective_tree_scan(x.flatten(1, 2), delta.flatten(1, 2), A, B.flatten(1), order, parent, delta_bias,
                               backend).view_as(x)


def tree_scan_readout(y: Tensor, x: Tensor, z: Tensor, C: Tensor, D: Tensor, h_norm_weight: Tensor,
                      h_norm_bias: Tensor, h_norm_eps: float, out_norm_weight: Tensor, out_norm_bias: Tensor,
                      out_norm_eps: float, backend: Optional[str] = None) -> Tensor:
    """GrootV's read-out of a scan y: LN2(LN1(y) * C + D * x) * silu(z) (`tree_scan_ref.readout_ref`), LN_i
    LayerNorms over the channels with the given weights, biases and eps.

    y, x, z: (B, L, D) (z may be a channel slice of a wider tensor); C: (B, L); D and the norms' weights and biases:
    (D,). Returns (B, L, D) in y's dtype (float32 or float64; the others are cast to it). Without gradients it is one
    forward-only op (the `cpu` backend: one pass over the vertices); when any input needs a gradient it is the
    reference's PyTorch composition, which autograd differentiates.
    """
    tensors = dict(y=y, x=x, z=z, C=C, D=D, h_norm_weight=h_norm_weight, h_norm_bias=h_norm_bias,
                   out_norm_weight=out_norm_weight, out_norm_bias=out_norm_bias)
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tree_scan_readout: {name} must be a floating-point torch.Tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.device != y.device:
            raise ValueError(f"tree_scan_readout: {name} is on {t.device} but y is on {y.device}")
    if y.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"tree_scan_readout: y must be float32 or float64 (the scan's output), got {y.dtype}")
    if y.dim() != 3 or x.shape != y.shape or z.shape != y.shape:
        raise ValueError(f"tree_scan_readout: y, x and z must be (B, L, D) of one shape, got {tuple(y.shape)}, "
                         f"{tuple(x.shape)} and {tuple(z.shape)}")
    if tuple(C.shape) != tuple(y.shape[:2]):
        raise ValueError(f"tree_scan_readout: C must be (B, L) = {tuple(y.shape[:2])}, got {tuple(C.shape)}")
    for name in ("D", "h_norm_weight", "h_norm_bias", "out_norm_weight", "out_norm_bias"):
        if tuple(tensors[name].shape) != (y.shape[2],):
            raise ValueError(f"tree_scan_readout: {name} must be ({y.shape[2]},), got {tuple(tensors[name].shape)}")
    args = (y, x, z, C, D, h_norm_weight, h_norm_bias, float(h_norm_eps), out_norm_weight, out_norm_bias,
            float(out_norm_eps))
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        return tree_scan_ref.readout_ref(*args).to(y.dtype)
    return call_op(_readout_op, *args, TREE_SCAN.check_name(backend))
