"""The "cpu" backend of `state_scan`: the C++/OpenMP kernel in `kernels/cpu/state_fusion_cpu.cpp` (one library with
the `state_fusion` kernel). Half-precision inputs are widened to float32 (the state dtype) here, gradients cast back.
"""
import torch

from .scan2d_ref import in_state_dtype, state_dtype
from .state_fusion_cpu import LIBRARY, pointer, suffix, unavailable_reason  # noqa: F401 (backend interface)


def forward(u, delta, A, B, delta_bias, delta_softplus):
    """States h (batch, L, N, E) in the state dtype; arguments as in `state_scan_ref`."""
    sd = state_dtype(u.dtype)
    (batch, L, E), N = u.shape, A.shape[1]
    h = torch.empty(batch, L, N, E, dtype=sd)
    if h.numel() > 0:
        inputs = in_state_dtype(sd, u, delta, A, B, delta_bias)  # referenced until the call returns
        LIBRARY.call(f"state_scan_forward_{suffix(sd)}", *map(pointer, inputs), h.data_ptr(), batch, L, E, N,
                     int(delta_softplus), torch.get_num_threads())
    return h


def backward(dh, u, delta, A, B, delta_bias, delta_softplus, h):
    """(du, ddelta, dA, dB, ddelta_bias) in the inputs' dtypes (None for an absent delta_bias)."""
    sd = state_dtype(u.dtype)
    (batch, L, E), N = u.shape, A.shape[1]
    blocks = LIBRARY.channel_blocks(E, sd.itemsize)
    du, ddelta = torch.zeros(u.shape, dtype=sd), torch.zeros(delta.shape, dtype=sd)
    dA, dB = torch.zeros(batch, N, E, dtype=sd), torch.zeros(blocks, batch, L, N, dtype=sd)
    d_bias = None if delta_bias is None else torch.zeros(batch, E, dtype=sd)
    if u.numel() > 0 and N > 0:
        inputs = in_state_dtype(sd, dh, u, delta, A, B, delta_bias, h)
        LIBRARY.call(f"state_scan_backward_{suffix(sd)}", *map(pointer, inputs),
                     *map(pointer, (du, ddelta, dA, dB, d_bias)), batch, L, E, N, int(delta_softplus),
                     torch.get_num_threads())
    dA, dB = dA.sum(0).t(), dB.sum(0)
    d_bias = None if d_bias is None else d_bias.sum(0).to(delta_bias.dtype)
    return du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), d_bias
