"""Reference of the GrootV tree scan (GrootVL, Xiao et al. 2024): the tree built from a guide map, then state
propagation over it. Readable PyTorch and Python, any device, float64-capable; the other backends must match it.

Tree (`build_tree`), exactly as the official code builds it:
  * Graph: the 4-neighbour grid of an H x W map, vertex v = h * W + w. Edges are numbered vertical ones first,
    ((h, w), (h + 1, w)) for h < H - 1 in row-major order of (h, w), then horizontal ones ((h, w), (h, w + 1)) for
    w < W - 1, again row-major (`grid_edges`).
  * Edge weight: exp(-cosine_similarity(guide[:, :, a], guide[:, :, b])) over the channel dimension, as
    `torch.cosine_similarity` (eps 1e-8) defines it, computed in float64 and rounded to float32, the type the tree is
    built in (`edge_weights`).
    Similar neighbours give light edges.
  * Minimum spanning tree by Boruvka's algorithm: each round, every component (a union-find set) picks its lightest
    outgoing edge, scanning edges in index order and replacing the pick only when strictly lighter, so a tie goes to
    the lowest edge index. The picks are then added visiting components in increasing order of their set
    representative; a pick whose two ends already share a set (possible with ties) is skipped. Sets are merged by
    rank (the first argument's root wins a tie in rank and gains one rank) with full path compression in `find`;
    these details decide the representatives, hence the visiting order, hence which edge of a tied cycle is dropped.
  * Root: vertex 0, the top-left pixel. Traversal: breadth first from the root; a vertex's children are queued in the
    order its tree edges were added (each added edge (a, b) appends b to a's neighbours and a to b's).

Propagation (`tree_scan_ref`), per batch item and channel, with decay w[v] in [0, 1] on the edge from v to its parent:
  * leaves to root: up[v] = x[v] + sum over children c of w[c] * up[c] (reverse breadth-first order);
  * root to leaves: y[root] = up[root]; y[v] = (1 - w[v]^2) * up[v] + w[v] * y[parent(v)] (breadth-first order).
  Together y[v] = sum over all u of x[u] * (product of w along the tree path between u and v): every pixel
  aggregates every other, weighted by the decays on the way. The root's own decay is unused (its gradient is zero).

Selective form (`selective_tree_scan_ref`, GrootV's mixer, d_state 1): from x, delta (B, L, D), A (D,), B (B, L) and an
optional delta_bias (D,): dt = softplus(delta + delta_bias), the propagated input u = dt * B * x and the decays
w = exp(dt * A) (`selective_inputs`).

Read-out (`readout_ref`, the official `tree_scanning_core` tail and GrootV's gate): out = LN2(LN1(y) * C + D * x) *
silu(z) per vertex, LN_i LayerNorms over the channels.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def unavailable_reason(device: torch.device) -> Optional[str]:
    return None


def grid_edges(height: int, width: int, device=None) -> Tensor:
    """(E, 2) int64 vertex pairs of the 4-neighbour grid: vertical edges first, then horizontal, each row-major."""
    index = torch.arange(height * width, device=device).view(height, width)
    vertical = torch.stack([index[:-1, :], index[1:, :]], -1).reshape(-1, 2)
    horizontal = torch.stack([index[:, :-1], index[:, 1:]], -1).reshape(-1, 2)
    return torch.cat([vertical, horizontal])


def edge_weights(guide: Tensor) -> Tensor:
    """(B, E) float32 weights exp(-cosine similarity) of `grid_edges` from guide (B, C, H, W), computed in float64
    and rounded to float32.

    The official code calls `torch.cosine_similarity` (each vector divided by its 2-norm clamped at eps = 1e-8, the
    products summed over channels) in float32, whose last bits depend on the device's reduction order; in float64 the
    order no longer shows after rounding, so every backend builds the same tree, and it is the tree of the official
    float32 weights except where two competing edges' similarities lie within float32 rounding of each other.
    """
    guide = guide.double()
    unit = guide / torch.linalg.vector_norm(guide, 2, dim=1, keepdim=True).clamp_min(1e-8)
    vertical = (unit[:, :, :-1, :] * unit[:, :, 1:, :]).sum(1).flatten(1)
    horizontal = (unit[:, :, :, :-1] * unit[:, :, :, 1:]).sum(1).flatten(1)
    return torch.exp(-torch.cat([vertical, horizontal], dim=1)).float()


class _DisjointSets:
    """Union-find with union by rank and full path compression."""

    def __init__(self, count: int):
        self.parent = list(range(count))
        self.rank = [0] * count

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if self.rank[a] < self.rank[b]:
            self.parent[a] = b
        elif self.rank[a] > self.rank[b]:
            self.parent[b] = a
        else:
            self.parent[b] = a
            self.rank[a] += 1


def boruvka_tree(edges: List[Tuple[int, int]], weights: List[float], vertex_count: int) -> List[Tuple[int, int]]:
    """The spanning tree's edges in the order Boruvka adds them (see the module docstring for the tie rules)."""
    sets = _DisjointSets(vertex_count)
    tree, components = [], vertex_count
    while components > 1:
        cheapest = [-1] * vertex_count
        for i, (a, b) in enumerate(edges):
            set_a, set_b = sets.find(a), sets.find(b)
            if set_a == set_b:
                continue
            for s in (set_a, set_b):
                if cheapest[s] == -1 or weights[cheapest[s]] > weights[i]:
                    cheapest[s] = i
        for pick in cheapest:
            if pick == -1:
                continue
            a, b = edges[pick]
            if sets.find(a) == sets.find(b):
                continue
            tree.append((a, b))
            sets.union(a, b)
            components -= 1
    return tree


def breadth_first(tree: List[Tuple[int, int]], vertex_count: int) -> Tuple[List[int], List[int]]:
    """(order, parent): vertices in breadth-first order from vertex 0, and each vertex's parent (the root's is 0)."""
    neighbours = [[] for _ in range(vertex_count)]
    for a, b in tree:
        neighbours[a].append(b)
        neighbours[b].append(a)
    order, parent = [0], [0] * vertex_count
    for v in order:  # grows while iterating: a queue
        for n in neighbours[v]:
            if n != parent[v]:  # the root's parent is itself, never its neighbour
                parent[n] = v
                order.append(n)
    return order, parent


def build_tree(guide: Tensor) -> Tuple[Tensor, Tensor]:
    """Minimum spanning tree of guide (B, C, H, W), rooted at pixel 0.

    Returns (order, parent), both (B, H*W) int64 on the guide's device: order[b, i] is the i-th vertex in breadth-first
    order (order[b, 0] == 0), parent[b, v] the parent vertex of v (parent[b, 0] == 0).
    """
    if guide.dim() != 4:
        raise ValueError(f"build_tree: guide must be (B, C, H, W), got shape {tuple(guide.shape)}")
    batch, _, height, width = guide.shape
    count = height * width
    edges = [tuple(e) for e in grid_edges(height, width).tolist()]
    weights = edge_weights(guide).cpu()
    orders, parents = [], []
    for b in range(batch):
        order, parent = breadth_first(boruvka_tree(edges, weights[b].tolist(), count), count)
        orders.append(order)
        parents.append(parent)
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64).view(batch, count).to(guide.device)
    return as_tensor(orders), as_tensor(parents)


TREE_ERRORS = {
    1: "tree_scan: every row of order must be a permutation of 0..L-1 starting at the root 0 (use build_tree)",
    2: "tree_scan: parent must hold vertices 0..L-1, the root 0 its own parent (use build_tree)",
    3: "tree_scan: a vertex comes before its parent in order: order must be breadth-first (or any parents-first order) "
       "of the tree parent describes (use build_tree)",
}


def check_tree(order: Tensor, parent: Tensor):
    """Raise ValueError (`TREE_ERRORS`) unless each row of order (B, L) is a permutation of 0..L-1 starting at the
    root 0, whose parent is itself, and every other vertex's parent in parent (B, L) comes before it in order: the
    kernels index with both."""
    if order.numel() == 0:
        return
    count = order.shape[1]
    steps = torch.arange(count, device=order.device).expand_as(order)
    if not torch.equal(order.sort(dim=1).values, steps) or (order[:, 0] != 0).any():
        raise ValueError(TREE_ERRORS[1])
    if parent.min() < 0 or parent.max() >= count or (parent[:, 0] != 0).any():
        raise ValueError(TREE_ERRORS[2])
    position = torch.empty_like(order).scatter_(1, order, steps)
    if (position.gather(1, parent)[:, 1:] >= position[:, 1:]).any():
        raise ValueError(TREE_ERRORS[3])


def _leaves_to_root(x: Tensor, decay: Tensor, order: List[int], parent: List[int]) -> List[Tensor]:
    """up[v] = x[v] + sum over children c of decay[c] * up[c], for one batch item; x, decay (L, D); a list of (D,)."""
    up = list(x.unbind(0))
    for v in reversed(order[1:]):
        up[parent[v]] = up[parent[v]] + decay[v] * up[v]
    return up


def _root_to_leaves(up: List[Tensor], decay: Tensor, order: List[int], parent: List[int]) -> List[Tensor]:
    """y[root] = up[root]; y[v] = (1 - decay[v]^2) up[v] + decay[v] y[parent(v)]."""
    y = list(up)
    for v in order[1:]:
        w = decay[v]
        y[v] = (1 - w * w) * up[v] + w * y[parent[v]]
    return y


def tree_scan_ref(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    """Both propagation passes; x, decay (B, L, D) (vertex-major), order, parent (B, L) from `build_tree`.
    Returns y (B, L, D).

    Differentiable by autograd: the passes are written per vertex, out of place.
    """
    outs = []
    for b in range(x.shape[0]):
        order_b, parent_b = order[b].tolist(), parent[b].tolist()
        outs.append(torch.stack(_root_to_leaves(_leaves_to_root(x[b], decay[b], order_b, parent_b), decay[b],
                                                order_b, parent_b)))
    return torch.stack(outs) if outs else x.clone()


def tree_scan_ref_backward(dy: Tensor, x: Tensor, decay: Tensor, order: Tensor,
                           parent: Tensor) -> Tuple[Tensor, Tensor]:
    """(dx, ddecay) of `tree_scan_ref`, written out.

    The filter is symmetric, so dx is the same two passes applied to dy. For a non-root vertex c with parent p, the
    pairs of pixels whose path crosses the edge c-p give
        ddecay[c] = up_x[c] (dx[p] - w[c] up_dy[c]) + up_dy[c] (y[p] - w[c] up_x[c])
    (up_*: leaves-to-root sums; dx[p] - w[c] up_dy[c] is what reaches p from outside c's subtree); the root's is 0.
    """
    dx, ddecay = torch.zeros_like(x), torch.zeros_like(decay)
    for b in range(x.shape[0]):
        order_b, parent_b = order[b].tolist(), parent[b].tolist()
        up_x = _leaves_to_root(x[b], decay[b], order_b, parent_b)
        up_dy = _leaves_to_root(dy[b], decay[b], order_b, parent_b)
        y, dx_b = (_root_to_leaves(up, decay[b], order_b, parent_b) for up in (up_x, up_dy))
        dx[b] = torch.stack(dx_b)
        for c in order_b[1:]:
            p, w = parent_b[c], decay[b, c]
            ddecay[b, c] = up_x[c] * (dx_b[p] - w * up_dy[c]) + up_dy[c] * (y[p] - w * up_x[c])
    return dx, ddecay


def forward(x: Tensor, decay: Tensor, order: Tensor, parent: Tensor) -> Tensor:
    check_tree(order, parent)
    return tree_scan_ref(x, decay, order, parent)


def backward(dy: Tensor, x: Tensor, decay: Tensor, order: Tensor, parent: Tensor, y: Tensor):
    check_tree(order, parent)
    return tree_scan_ref_backward(dy, x, decay, order, parent)


def softplus(x: Tensor) -> Tensor:
    """F.softplus (beta 1, threshold 20) as log(1 + exp(x)): within 1e-6 of it (6e-8 below x = -16, where it gives
    0 for exp(x)) and about 3x faster on CPU, where PyTorch's softplus evaluates log1p without vectorisation."""
    return torch.log(torch.exp(x) + 1).where(x <= 20, x)


def selective_inputs(x: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                     delta_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """(u, decay, dt), each (B, L, D), in x's dtype widened to at least float32: dt = softplus(delta + delta_bias),
    u = dt * B * x, decay = exp(dt * A)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    s = delta.to(dtype) if delta_bias is None else delta.to(dtype) + delta_bias.to(dtype)
    dt = softplus(s)
    return dt * B.to(dtype).unsqueeze(-1) * x.to(dtype), torch.exp(dt * A.to(dtype)), dt


def selective_inputs_backward(du: Tensor, ddecay: Tensor, x: Tensor, delta: Tensor, A: Tensor, B: Tensor,
                              delta_bias: Optional[Tensor]) -> Tuple[Tensor, ...]:
    """(dx, ddelta, dA, dB, ddelta_bias) (ddelta_bias None without delta_bias) from the gradients of u and decay,
    each in its input's dtype."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    s = delta.to(dtype) if delta_bias is None else delta.to(dtype) + delta_bias.to(dtype)
    dt = softplus(s)
    x_, A_, B_ = x.to(dtype), A.to(dtype), B.to(dtype).unsqueeze(-1)
    ddecay_a = ddecay.to(dtype) * torch.exp(dt * A_)  # d/d(dt A)
    du = du.to(dtype)
    ddelta = (du * B_ * x_ + ddecay_a * A_) * torch.sigmoid(s).where(s <= 20, 1.0)
    dx = du * dt * B_
    dB = (du * dt * x_).sum(-1)
    dA = (ddecay_a * dt).sum((0, 1))
    dbias = None if delta_bias is None else ddelta.sum((0, 1)).to(delta_bias.dtype)
    return dx.to(x.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dbias


def selective_tree_scan_ref(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, order: Tensor, parent: Tensor,
                            delta_bias: Optional[Tensor] = None) -> Tensor:
    """`tree_scan_ref` of u = dt * B * x with decays exp(dt * A), dt = softplus(delta + delta_bias); x, delta
    (B, L, D), A (D,), B (B, L), order, parent (B, L). Returns y (B, L, D). Differentiable by autograd."""
    u, decay, _ = selective_inputs(x, delta, A, B, delta_bias)
    return tree_scan_ref(u, decay, order, parent).to(x.dtype)


def selective_forward(x, delta, A, B, delta_bias, order, parent, scan=forward) -> Tensor:
    """The selective form for a backend whose propagation is `scan(u, decay, order, parent)`."""
    u, decay, _ = selective_inputs(x, delta, A, B, delta_bias)
    return scan(u, decay, order, parent).to(x.dtype)


def readout_ref(y: Tensor, x: Tensor, z: Tensor, C: Tensor, D: Tensor, h_norm_weight: Tensor, h_norm_bias: Tensor,
                h_norm_eps: float, out_norm_weight: Tensor, out_norm_bias: Tensor, out_norm_eps: float) -> Tensor:
    """LN2(LN1(y) * C + D * x) * silu(z); y, x, z (B, L, D), C (B, L), D and the norms' weights and biases (D,)."""
    channels = (y.shape[-1],)
    t = F.layer_norm(y, channels, h_norm_weight, h_norm_bias, h_norm_eps) * C.unsqueeze(-1) + D * x
    return F.layer_norm(t, channels, out_norm_weight, out_norm_bias, out_norm_eps) * F.silu(z)


def readout(*args) -> Tensor:
    return readout_ref(*args)
