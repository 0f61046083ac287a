"""Scan orders of the 1D selective scan: (K, L) int64 index maps, row k lists the storage positions direction k visits.

Pixels are stored row-major (position p = i * W + j of an H x W map).
"""
import functools
from typing import Tuple

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
    # each step's pixel by arithmetic on the step number, not by flipping every other row of a grid: symbolic sizes
    # (torch.compile, export) then carry no strides of strided slices, whose relations a Dim range cannot prove
    step = torch.arange(H * W, device=device)
    row, column = step // W, step % W  # of the row snake's step
    row_snake = row * W + torch.where(row % 2 == 1, W - 1 - column, column)
    column, row = step // H, step % H  # of the column snake's step
    column_snake = torch.where(column % 2 == 1, H - 1 - row, row) * W + column
    return torch.stack([row_snake, row_snake.flip(0), column_snake, column_snake.flip(0)])


def _host_cached(maxsize: int):
    """Decorator: eager calls go through an LRU cache of `maxsize` results; torch.compile traces the function itself
    (its result becomes a constant of the graph; dynamo warns about lru_cache wrappers)."""
    def wrap(builder):
        cached = functools.lru_cache(maxsize=maxsize)(builder)

        @functools.wraps(builder)
        def lookup(*args):
            return builder(*args) if torch.compiler.is_compiling() else cached(*args)
        return lookup
    return wrap


def stored_per_device(builder):
    """Decorator for `builder(*sizes, device)`, a tensor its callers only read (a scan order): eager calls build it
    once per (sizes, device) and keep it (an LRU of 32; every block of a stage scans the same sizes), made outside
    inference mode so that autograd can use it after an inference-mode call; compiled graphs and the meta device build
    it afresh."""
    @functools.lru_cache(maxsize=32)
    def stored(*args):
        with torch.inference_mode(False):
            return builder(*args)

    @functools.wraps(builder)
    def lookup(*args):
        if torch.compiler.is_compiling() or args[-1].type == "meta":
            return builder(*args)
        return stored(*args)
    return lookup


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
        moves[:, 1:].masked_fill_(hit, code)  # no boolean indexing: traceable with symbolic sizes
        matched |= hit
    if torch.compiler.is_compiling():  # a graph cannot branch on values: the check runs inside it
        torch._assert_async(matched.all(), "scan_moves: a step jumps between pixels that are not neighbours")
    elif not matched.all():
        k, t = (~matched).nonzero()[0].tolist()
        raise ValueError(f"scan_moves: step {t + 1} of order {k} jumps from pixel {orders[k, t].item()} to "
                         f"{orders[k, t + 1].item()}, which is not a neighbour on the {H}x{W} map")
    return moves


def local_scan_orders(H: int, W: int, directions, device=None) -> Tensor:
    """LocalMamba's scan directions over an H x W map, (K, H * W + P): one row per name of `directions`, each "h"
    (row-major), "v" (column-major) or "w<k>" (k x k windows), optionally suffixed "_flip" (the whole sequence
    reversed).

    A window scan zero-pads the map at the bottom and right to multiples of k, visits the windows row-major and each
    window's pixels row-major; its padded pixels are real scan steps. They are storage positions H * W .. H * W + P - 1
    (P: the most padding any direction needs), which the caller fills with zeros; every direction visits the padding
    it does not scan after its own sequence, where it cannot change a real output.
    """
    if H < 0 or W < 0:
        raise ValueError(f"local_scan_orders: H and W must be >= 0, got H={H}, W={W}")
    # the length from the sizes, not the sequences, and a max only between different windows (a padded length is
    # never below H * W): symbolic sizes (torch.compile, export) then have fewer relations to decide
    windows = sorted({_parse_direction(name)[2] for name in directions} - {0})
    lengths = [_sequence_length(H, W, f"w{k}") for k in windows]
    length = functools.reduce(torch.sym_max, lengths) if lengths else H * W
    # each row built on the host once per map size, direction and length (cached), stacked into a new tensor, then
    # moved: meta and CUDA alike
    rows = [_order_row(H, W, name, length) for name in directions]
    orders = torch.stack(rows) if rows else torch.empty(0, length, dtype=torch.int64, device="cpu")
    return orders.to(device)


def _parse_direction(name: str) -> Tuple[str, bool, int]:
    """(base name, flipped, window size k for w<k> with k >= 1, else 0) of direction `name`."""
    base, flip = (name[:-len("_flip")], True) if name.endswith("_flip") else (name, False)
    window = int(base[1:]) if base[:1] == "w" and base[1:].isdigit() else 0
    return base, flip, window


def _sequence_length(H: int, W: int, name: str) -> int:
    """The length of direction `name`'s sequence: H * W, or more with window padding."""
    k = _parse_direction(name)[2]
    return -(-H // k) * k * (-(-W // k) * k) if k > 0 else H * W


@_host_cached(maxsize=64)
def _direction_sequence(H: int, W: int, name: str) -> Tensor:
    """Direction `name`'s storage positions in scan order on the host, -1 at window padding."""
    grid = torch.arange(H * W, device="cpu").view(H, W)
    base, flip, k = _parse_direction(name)
    if base == "h":
        sequence = grid.reshape(-1)
    elif base == "v":
        sequence = grid.t().reshape(-1)
    elif k > 0:
        # each step's pixel by arithmetic on the step number (window, then place in the window), not by copying
        # into a slice nor viewing a padded grid as windows: with symbolic sizes a slice guards on its end, and a
        # dimension of one window (a map of at most k pixels) would be specialised to one
        columns = -(-W // k)
        step = torch.arange(_sequence_length(H, W, name), device="cpu")
        window, place = step // (k * k), step % (k * k)
        row, column = window // columns * k + place // k, window % columns * k + place % k
        sequence = torch.where((row < H) & (column < W), row * W + column, -1)
    else:
        raise ValueError(f"local_scan_orders: unknown direction {name!r}; expected h, v or w<k> (k >= 1), "
                         f"each optionally with '_flip'")
    return sequence.flip(0) if flip else sequence


@_host_cached(maxsize=64)
def _order_row(H: int, W: int, name: str, length: int) -> Tensor:
    """Direction `name`'s row of a (K, length) order on the host: its padding steps at positions H * W, H * W + 1,
    ... in scan order, then the rest of the padding positions up to `length`."""
    sequence = _direction_sequence(H, W, name)
    padding = sequence < 0  # numbered in scan order by a running count: no sizes that depend on values
    sequence = torch.where(padding, H * W - 1 + padding.cumsum(0), sequence)
    # the row as one piece of `length` steps, not the sequence and the rest of the padding concatenated: symbolic
    # shapes specialise a piece 0 or 1 long (e.g. LocalMamba's exported program then held only at the traced size)
    steps = torch.arange(length, device="cpu")
    return torch.where(steps < sequence.shape[0], sequence[steps.clamp(max=sequence.shape[0] - 1)], steps)


def multiscale_scan_order(H: int, W: int, device=None) -> Tensor:
    """MSVMamba's scan of its downsampled map as ONE sequence, (1, 3 * H * W): reversed row-major, then column-major,
    then reversed column-major, the state carried across the three segments. Storage holds three copies of the H x W
    map (copy c at positions c * H * W + p, p row-major); segment c visits copy c, so every storage position is one
    pixel of one segment."""
    if H < 0 or W < 0:
        raise ValueError(f"multiscale_scan_order: H and W must be >= 0, got H={H}, W={W}")
    return _multiscale_scan_order_on_host(H, W).to(device, copy=True)  # built once per size


@_host_cached(maxsize=32)
def _multiscale_scan_order_on_host(H: int, W: int) -> Tensor:
    row_major = torch.arange(H * W, device="cpu")
    column_major = row_major.view(H, W).t().reshape(-1)
    return torch.cat([row_major.flip(0), column_major + H * W, column_major.flip(0) + 2 * H * W]).unsqueeze(0)
