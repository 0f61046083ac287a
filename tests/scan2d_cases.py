"""Input factories shared by the scan tests."""
import torch

# (B, H, W, E, N): H != W, H or W = 1, odd sizes, N in {1, 4, 16}, several E
SHAPES = [(2, 3, 5, 4, 4), (1, 1, 7, 3, 4), (1, 6, 1, 2, 16), (2, 5, 5, 6, 1), (1, 9, 4, 5, 16), (1, 2, 2, 1, 4)]


def make_scan_inputs(B, H, W, E, N, dtype=torch.float32, device="cpu", seed=0, with_d=True, delta_scale=1.0):
    """Random inputs of `selective_scan_2d` in the ranges a trained model sees; A and D stay fp32 like parameters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device)

    per_pixel = dict(u=rand(B, H, W, E), delta_t=rand(B, H, W, E, scale=delta_scale, shift=-1.0),
                     delta_l=rand(B, H, W, E, scale=delta_scale, shift=-1.0), B_t=rand(B, H, W, N),
                     B_l=rand(B, H, W, N), C=rand(B, H, W, N))
    per_pixel = {k: v.to(dtype) for k, v in per_pixel.items()}
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    A_t = -torch.exp(rand(E, N, scale=0.5, shift=1.0)).to(param_dtype)
    A_l = -torch.exp(rand(E, N, scale=0.5, shift=1.0)).to(param_dtype)
    D = rand(E).to(param_dtype) if with_d else None
    return (per_pixel["u"], per_pixel["delta_t"], per_pixel["delta_l"], A_t, A_l, per_pixel["B_t"], per_pixel["B_l"],
            per_pixel["C"], D)
