"""Inputs shared by the state-scan / state-fusion op tests (CPU and Triton)."""
import math

import torch

# state_scan: (batch, L, E, N); E = 40 and 70 leave partial channel blocks, L = 1 a single step
SCAN_SHAPES = [(2, 7, 5, 3), (1, 30, 40, 1), (3, 12, 16, 2), (1, 1, 70, 1), (2, 9, 33, 1)]
# state_fusion: (batch, H, W, C, k); 1x1, 1xW and Hx1 maps, kernels larger than the map
FUSION_SHAPES = [(2, 4, 6, 3, 11), (1, 1, 1, 20, 3), (2, 7, 5, 17, 5), (1, 9, 7, 40, 11), (1, 1, 6, 8, 11),
                 (2, 5, 1, 16, 3)]

# state_scan_fusion: (batch, H, W, E, N, k); partial channel blocks, two states, a 1x1 and a 1xW map
SCAN_FUSION_SHAPES = [(2, 3, 4, 5, 1, 11), (1, 5, 7, 40, 1, 11), (2, 4, 3, 17, 2, 5), (1, 1, 1, 20, 1, 3),
                      (1, 1, 6, 33, 1, 11)]


def make_scan_inputs(batch, L, E, N, dtype=torch.float32, with_bias=True, seed=0):
    """(u, delta, A, B, delta_bias): step sizes around 0.2..2 after softplus, A in [-4, -0.05]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, L, E, generator=g)
    delta = torch.randn(batch, L, E, generator=g) * 0.5
    A = -torch.exp(torch.empty(E, N).uniform_(math.log(0.05), math.log(4), generator=g))
    B = torch.randn(batch, L, N, generator=g)
    bias = torch.randn(E, generator=g) * 0.5 if with_bias else None
    u, delta, B = (t.to(dtype) for t in (u, delta, B))
    if dtype == torch.float64:  # parameters stay float32 but for float64 runs
        A, bias = A.double(), None if bias is None else bias.double()
    return [u, delta, A, B, bias]


def make_fusion_inputs(batch, H, W, C, k, dtype=torch.float32, sparse=True, seed=0):
    """(x, weight): with `sparse`, the weight is zero on every tap off the merged 1/3/5-dilation pattern (as in
    Spatial-Mamba) or on a k x k kernel's alternate taps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, H, W, C, generator=g).to(dtype)
    weight = torch.randn(C, k, k, generator=g) / k
    if sparse:
        weight[:, ::2, 1::2] = 0
    return x, weight.double() if dtype == torch.float64 else weight


def make_scan_fusion_inputs(batch, H, W, E, N, k, dtype=torch.float32, with_optional=True, seed=0):
    """(u, delta, A, B, C, weight, D, delta_bias) of `state_scan_fusion`: the scan's inputs as maps, the merged
    1/3/5-dilation pattern of taps (sparse) for k = 11, D and delta_bias None without `with_optional`."""
    u, delta, A, B, bias = make_scan_inputs(batch, H * W, E, N, dtype, with_optional, seed)
    g = torch.Generator().manual_seed(seed + 1)
    C = torch.randn(batch, H, W, N, generator=g).to(dtype)
    _, weight = make_fusion_inputs(1, 1, 1, E, k, seed=seed + 2)
    D = torch.randn(E, generator=g) if with_optional else None
    if dtype == torch.float64:
        weight, D = weight.double(), None if D is None else D.double()
    return [u.view(batch, H, W, E), delta.view(batch, H, W, E), A, B.view(batch, H, W, N), C, weight, D, bias]


def make_norm_and_gate(u, affine=True, seed=0):
    """(norm_weight, norm_bias, gate) for `state_scan_fusion`'s LayerNorm and SiLU gate after the read-out (weight and
    bias None without `affine`)."""
    g = torch.Generator().manual_seed(seed + 3)
    E = u.shape[-1]
    weight, bias = 1 + 0.5 * torch.randn(E, generator=g), 0.5 * torch.randn(E, generator=g)
    gate = torch.randn(u.shape, generator=g).to(u.dtype)
    if u.dtype == torch.float64:
        weight, bias = weight.double(), bias.double()
    return (weight, bias, gate) if affine else (None, None, gate)
