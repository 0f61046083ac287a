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


def zigzag_scan_orders(H: int, W: int, device=None) -> Tensor:
    """PlainMamba's four continuous zig-zag (snake) scans, (4, H * W): a row snake from the top-left corner (even rows
    left to right, odd rows right to left), that snake reversed, a column snake from the top-left corner (even columns
    top to bottom, odd columns bottom to top), and that snake reversed. Consecutive steps are always neighbours."""
    if H < 0 or W < 0:
        raise ValueError(f"zigzag_scan_orders: H and W must be >= 0, got H={H}, W={W}")
    grid = torch.arange(H * W, device=device).view(H, W)
    rows = grid.clone()
    rows[1::2] = rows[1::2].flip(1)
    columns = grid.t().clone()
    columns[1::2] = columns[1::2].flip(1)
    row_snake, column_snake = rows.reshape(-1), columns.reshape(-1)
    return torch.stack([row_snake, row_snake.flip(0), column_snake, column_snake.flip(0)])


MOVE_START, MOVE_RIGHT, MOVE_LEFT, MOVE_UP, MOVE_DOWN = range(5)


def scan_moves(orders: Tensor, H: int, W: int) -> Tensor:
    """The move that leads to each scan step, (K, L) int64 from (K, L) orders over an H x W map: MOVE_START (0) at
    step 0, then MOVE_RIGHT (1), MOVE_LEFT (2), MOVE_UP (3) or MOVE_DOWN (4) from the previous step's pixel (steps
    between pixels that are not neighbours are an error)."""
    if orders.dim() != 2 or orders.shape[1] != H * W:
        raise ValueError(f"scan_moves: orders must be (K, H * W) = (K, {H * W}), got {tuple(orders.shape)}")
    rows, columns = torch.div(orders, max(W, 1), rounding_mode="floor"), orders % max(W, 1)
    steps = torch.stack([rows.diff(dim=1), columns.diff(dim=1)], dim=-1)  # (K, L - 1, 2) row and column change
    moves = torch.full(orders.shape, MOVE_START, dtype=torch.int64, device=orders.device)
    matched = torch.zeros(steps.shape[:2], dtype=torch.bool, device=orders.device)
    for code, step in ((MOVE_RIGHT, (0, 1)), (MOVE_LEFT, (0, -1)), (MOVE_UP, (-1, 0)), (MOVE_DOWN, (1, 0))):
        hit = (steps == torch.tensor(step, device=orders.device)).all(-1)
        moves[:, 1:][hit] = code
        matched |= hit
    if not matched.all():
        k, t = (~matched).nonzero()[0].tolist()
        raise ValueError(f"scan_moves: step {t + 1} of order {k} jumps from pixel {orders[k, t].item()} to "
                         f"{orders[k, t + 1].item()}, which is not a neighbour on the {H}x{W} map")
    return moves
