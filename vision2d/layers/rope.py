"""2D rotary position embedding with interleaved pairs: the first half of each head rotates by the row index,
the second half by the column index."""
import torch


def rope_2d_angles(H: int, W: int, head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """Rotation angles (H * W, head_dim // 2) in fp32 for row-major tokens.

    Pair k of the row half (dims 2k, 2k+1 of the first head_dim/2) turns by i * base^(-k / (head_dim/4)),
    pair k of the column half likewise by j.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    pairs = head_dim // 4
    inv_freq = base ** (-torch.arange(pairs, device=device, dtype=torch.float32) / pairs)
    rows = torch.arange(H, device=device, dtype=torch.float32).repeat_interleave(W)
    cols = torch.arange(W, device=device, dtype=torch.float32).repeat(H)
    return torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)


def apply_rope_2d(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (..., T, head_dim) by angles (T, head_dim // 2): (a, b) -> (a cos - b sin,
    b cos + a sin). cos and sin are computed in fp32 and cast to x's dtype."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
