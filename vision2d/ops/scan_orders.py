"""Scan orders of the 1D selective scan: (K, L) int64 index maps, row k lists the storage positions direction k visits.

Pixels are stored row-major (position p = i * W + j of an H x W map).
"""
import torch
from torch import Tensor


def cross_scan_orders(H: int, W: int, device=None) -> Tensor:
    """VMamba's four cross-scan directions, (4, H * W): row-major, column-major, reversed row-major, reversed
    column-major."""
    if H < 0 or W < 0:
        raise ValueError(f"cross_scan_orders: H and W must be >= 0, got H={H}, W={W}")
    row_major = torch.arange(H * W, device=device)
    column_major = row_major.view(H, W).t().reshape(-1)
    return torch.stack([row_major, column_major, row_major.flip(0), column_major.flip(0)])
