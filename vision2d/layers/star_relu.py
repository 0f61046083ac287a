"""StarReLU: s * relu(x) ** 2 + b with learnable scalars (MetaFormer)."""
import torch
from torch import nn


class StarReLU(nn.Module):
    """s * relu(x)^2 + b; `scale` and `bias` are learnable tensors of shape (1,)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), scale_value, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.full((1,), bias_value, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias
