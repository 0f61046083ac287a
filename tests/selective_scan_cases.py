"""Input factories shared by the selective-scan tests."""
import torch

# (batch, L, K, E, N): odd L, L = 1, N in {1, 4, 16}, K in {1, 2, 4}, odd E
SHAPES = [(2, 7, 4, 5, 1), (1, 1, 2, 3, 4), (2, 9, 1, 6, 16), (1, 12, 2, 1, 4), (3, 5, 4, 3, 16), (1, 16, 4, 8, 1)]


def random_orders(K, L, seed=0, device="cpu"):
    """(K, L) int64: one random permutation of 0..L-1 per direction."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(L, generator=g) for _ in range(K)]
    return (torch.stack(rows) if rows else torch.empty(0, L, dtype=torch.int64)).to(device)


def make_inputs(batch, L, K, E, N, dtype=torch.float32, device="cpu", seed=0, with_d=True, with_bias=True,
                delta_scale=1.0):
    """Random (u, delta, A, B, C, D, delta_bias) in the ranges a trained model sees; A, D, delta_bias stay fp32 like
    parameters (fp64 for fp64 inputs). delta is raw (use delta_softplus=True)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift)

    u, delta = rand(batch, L, E), rand(batch, L, K, E, scale=delta_scale, shift=-1.0)
    B, C = rand(batch, L, K, N), rand(batch, L, K, N)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    A = -torch.exp(rand(K, E, N, scale=0.5, shift=0.5))
    D = rand(K, E) if with_d else None
    bias = rand(K, E, scale=0.5) if with_bias else None
    per_pixel = [t.to(dtype=dtype, device=device) for t in (u, delta)]
    bc = [t.to(dtype=dtype, device=device) for t in (B, C)]
    params = [t.to(dtype=param_dtype, device=device) if t is not None else None for t in (A, D, bias)]
    return per_pixel[0], per_pixel[1], params[0], bc[0], bc[1], params[1], params[2]


def make_low_rank_inputs(batch, L, K, E, N, R, dtype=torch.float32, device="cpu", seed=0):
    """`make_inputs` with delta as the low-rank (batch, L, K, R) input of a delta projection: returns (u, delta, A,
    B, C, D, delta_bias, delta_proj_weight (K, E, R)), the weight in the parameters' dtype; projected deltas have
    `make_inputs`' range."""
    u, _, A, B, C, D, bias = make_inputs(batch, L, K, E, N, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    delta = torch.randn(batch, L, K, R, generator=g, dtype=torch.float64)
    weight = torch.randn(K, E, R, generator=g, dtype=torch.float64) * R ** -0.5
    bias = bias - 1.0  # the raw deltas' shift
    return u, delta.to(dtype=dtype, device=device), A, B, C, D, bias, weight.to(dtype=A.dtype, device=device)
