"""GrootV's tree scan: the tree build and both propagation passes, the `cpu` backend against the float64 reference
(tests/op_harness.py), the reference against the official op (fixture) and a brute-force path-product oracle. The
Triton kernels are tested in test_tree_scan_triton.py.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from op_harness import assert_matches_reference, require_backend
from vision2d.ops import tree_scan_ref
from vision2d.ops.tree_scan import TREE_SCAN, build_tree, selective_tree_scan, selective_tree_scan_2d, tree_scan, \
    tree_scan_2d, tree_scan_readout

FIXTURE = Path(__file__).parent / "data" / "official_grootv_parity.pt"
SHAPES = [(1, 1, 1, 1), (2, 3, 1, 9), (1, 2, 8, 1), (2, 5, 4, 6), (1, 3, 7, 7)]  # (B, D, H, W)
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}


def load_official_cases():
    return torch.load(FIXTURE, weights_only=True)["op_cases"]


@pytest.fixture(scope="module")
def official():
    return load_official_cases()


def _guide(kind: str, batch: int, height: int, width: int, generator) -> torch.Tensor:
    """Guides whose similarities are random, all equal (constant or zero features), or tied in a pattern."""
    if kind == "random":
        return torch.randn(batch, 4, height, width, generator=generator)
    if kind == "constant":
        return torch.full((batch, 4, height, width), 0.7)
    if kind == "zero":
        return torch.zeros(batch, 4, height, width)
    guide = torch.zeros(batch, 2, height, width)  # checkerboard: two similarities, each many times
    guide[:, 0] = 1
    guide[:, 1, ::2, 1::2] = 1
    guide[:, 1, 1::2, ::2] = 1
    return guide


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def _tree_edges(parent: torch.Tensor):
    return [{tuple(sorted((v, int(p[v])))) for v in range(1, p.numel())} for p in parent]


def _path_product_oracle(x, decay, parent):
    """y[v] = sum_u x[u] prod(decay on the tree path u..v), by walking each pair's paths to the root (O(L^2 depth))."""
    batch, count, channels = x.shape
    y = torch.zeros_like(x)
    for b in range(batch):
        def ancestors(v):
            chain = [v]
            while chain[-1] != 0:
                chain.append(int(parent[b, chain[-1]]))
            return chain
        chains = [ancestors(v) for v in range(count)]
        for v in range(count):
            for u in range(count):
                common = set(chains[u]) & set(chains[v])
                factor = torch.ones(channels, dtype=x.dtype)
                for a in chains[u] + chains[v]:
                    if a not in common:  # the edge a -> parent(a) is on the path
                        factor = factor * decay[b, a]
                y[b, v] += factor * x[b, u]
    return y


def _inputs(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width = shape
    x = torch.randn(batch, height * width, channels, generator=generator).to(dtype)
    decay = torch.rand(batch, height * width, channels, generator=generator).to(dtype)
    return x, decay, torch.randn(batch, 4, height, width, generator=generator)


def test_reference_tree_and_output_match_the_official_op(official):
    for case in official:
        feature, decay, expected = (_channels_last(case[k]) for k in ("feature", "decay", "output"))
        order, parent = tree_scan_ref.build_tree(case["guide"])
        official_edges = [{tuple(sorted(e)) for e in tree.tolist()} for tree in case["tree_edges"]]
        assert _tree_edges(parent) == official_edges, case["name"]
        y = tree_scan_ref.tree_scan_ref(feature.flatten(1, 2).double(), decay.flatten(1, 2).double(), order, parent)
        torch.testing.assert_close(y.view_as(expected).float(), expected, rtol=1e-5, atol=1e-6, msg=case["name"])


def assert_backend_matches_the_official_op(case, backend):
    feature, decay, guide, expected = (_channels_last(case[k]) for k in ("feature", "decay", "guide", "output"))
    y = tree_scan_2d(feature, decay, guide, backend=backend)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6, msg=case["name"])


def test_cpu_backend_matches_the_official_op(official):
    require_backend(TREE_SCAN, "cpu")
    for case in official:
        assert_backend_matches_the_official_op(case, "cpu")


@pytest.mark.parametrize("kind", ["random", "constant", "zero", "checkerboard"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (5, 8), (9, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_compiled_tree_equals_reference_tree(kind, shape):
    guide = _guide(kind, 2, *shape, torch.Generator().manual_seed(1))
    order, parent = build_tree(guide, backend="cpu")
    ref_order, ref_parent = tree_scan_ref.build_tree(guide)
    assert torch.equal(order, ref_order) and torch.equal(parent, ref_parent)


@pytest.mark.parametrize("kind", ["random", "constant", "checkerboard"])
def test_tree_is_a_breadth_first_spanning_tree_of_the_grid_rooted_at_pixel_0(kind):
    height, width = 6, 7
    order, parent = tree_scan_ref.build_tree(_guide(kind, 2, height, width, torch.Generator().manual_seed(2)))
    for o, p in zip(order.tolist(), parent.tolist()):
        assert o[0] == 0 and p[0] == 0
        assert sorted(o) == list(range(height * width))
        position = {v: i for i, v in enumerate(o)}
        for v in o[1:]:
            dh, dw = abs(v // width - p[v] // width), abs(v % width - p[v] % width)
            assert dh + dw == 1, "a tree edge joins 4-neighbours"
            assert position[p[v]] < position[v], "parents come first"
            depth = lambda u: 0 if u == 0 else 1 + depth(p[u])
            assert depth(v) == depth(p[v]) + 1


@pytest.mark.parametrize("shape", [(2, 160, 56, 56), (1, 7, 5, 9), (2, 33, 1, 17), (2, 16, 9, 1), (1, 3, 1, 1)])
def test_edge_weights_are_torch_cosine_similarity(shape):
    """The official weights, exp(-torch.cosine_similarity) of each edge's two pixel slices (vertical edges first), up
    to float32 rounding (ours are computed in float64); a channels-last guide gives the same bits."""
    guide = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    guide[:, :, 0, 0] = 0  # a zero vector: the norm clamp
    b, c = shape[:2]
    vertical = F.cosine_similarity(guide[:, :, :-1, :].reshape(b, c, -1), guide[:, :, 1:, :].reshape(b, c, -1), dim=1)
    horizontal = F.cosine_similarity(guide[:, :, :, :-1].reshape(b, c, -1), guide[:, :, :, 1:].reshape(b, c, -1),
                                     dim=1)
    expected = torch.exp(-torch.cat([vertical, horizontal], dim=1))
    weights = tree_scan_ref.edge_weights(guide)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=0)
    assert torch.equal(tree_scan_ref.edge_weights(guide.to(memory_format=torch.channels_last)), weights)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_tree_equals_reference_tree_at_model_size(layout):
    """The compiled kernel computes the weights itself (from channels-last pixels): on a stage-1 sized guide its tree
    is the reference's, vertex for vertex."""
    guide = torch.randn(2, 160, 56, 56, generator=torch.Generator().manual_seed(12))
    if layout == "channels_last":
        guide = guide.to(memory_format=torch.channels_last)
    order, parent = build_tree(guide, backend="cpu")
    ref_order, ref_parent = tree_scan_ref.build_tree(guide)
    assert torch.equal(order, ref_order) and torch.equal(parent, ref_parent)


def test_tree_prefers_similar_neighbours():
    """Two flat regions: the tree crosses the boundary between them exactly once."""
    guide = torch.ones(1, 2, 4, 6)
    guide[:, 1, :, 3:] = -1.0  # right half points elsewhere
    guide[:, 0] += 0.01 * torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(3))
    _, parent = build_tree(guide)
    crossing = [v for v in range(1, 24) if (v % 6 < 3) != (int(parent[0, v]) % 6 < 3)]
    assert len(crossing) == 1


def test_reference_matches_the_path_product_oracle():
    for shape in [(1, 2, 3, 4), (2, 1, 1, 5), (1, 2, 4, 1)]:
        x, decay, guide = _inputs(shape, torch.float64, seed=4)
        order, parent = tree_scan_ref.build_tree(guide)
        torch.testing.assert_close(tree_scan_ref.tree_scan_ref(x, decay, order, parent),
                                   _path_product_oracle(x, decay, parent), rtol=1e-12, atol=1e-12)


def assert_backend_matches_reference(backend, dtype, shape):
    """Output and both gradients against the float64 reference, on a tree of a random guide."""
    x, decay, guide = _inputs(shape, dtype)
    order, parent = build_tree(guide, backend="cpu")
    assert_matches_reference(tree_scan, tree_scan_ref.tree_scan_ref, (x, decay, order, parent),
                             ("x", "decay", "order", "parent"), dtype, backend)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_backend_matches_reference_forward_and_backward(dtype, shape):
    require_backend(TREE_SCAN, "cpu")
    assert_backend_matches_reference("cpu", dtype, shape)


def _selective_inputs(shape, dtype, seed=0):
    """x, delta, A, B, delta_bias of the selective form; deltas span softplus's linear (> 20) and exponential tails."""
    generator = torch.Generator().manual_seed(seed)
    batch, channels, height, width = shape
    count = height * width
    x = torch.randn(batch, count, channels, generator=generator)
    delta = 4 * torch.randn(batch, count, channels, generator=generator)
    delta.view(-1)[::7] = 25.0
    delta.view(-1)[3::11] = -30.0
    A = -torch.exp(torch.randn(channels, generator=generator))
    B = torch.randn(batch, count, generator=generator)
    delta_bias = torch.randn(channels, generator=generator)
    guide = torch.randn(batch, 4, height, width, generator=generator)
    return [t.to(dtype) for t in (x, delta, A, B, delta_bias)], guide


def assert_selective_matches_reference(backend, dtype, shape, with_bias=True):
    """The selective form's output and the gradients of x, delta, A, B and delta_bias against the float64 reference."""
    (x, delta, A, B, delta_bias), guide = _selective_inputs(shape, dtype)
    order, parent = build_tree(guide, backend="cpu")
    assert_matches_reference(selective_tree_scan, tree_scan_ref.selective_tree_scan_ref,
                             (x, delta, A, B, order, parent, delta_bias if with_bias else None),
                             ("x", "delta", "A", "B", "order", "parent", "delta_bias"), dtype, backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES + [(2, 160, 6, 7)], ids=lambda s: "x".join(map(str, s)))
def test_selective_matches_reference_forward_and_backward(backend, dtype, shape):
    require_backend(TREE_SCAN, backend)
    assert_selective_matches_reference(backend, dtype, shape)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_selective_without_delta_bias(backend):
    assert_selective_matches_reference(backend, torch.float32, (2, 5, 4, 6), with_bias=False)


def test_selective_is_tree_scan_of_its_inputs():
    """selective_tree_scan(x, delta, A, B) == tree_scan(dt B x, exp(dt A)), dt = softplus(delta + delta_bias)."""
    (x, delta, A, B, delta_bias), guide = _selective_inputs((2, 6, 5, 4), torch.float64, seed=3)
    dt = F.softplus(delta + delta_bias)
    expected = tree_scan_2d((dt * B.unsqueeze(-1) * x).view(2, 5, 4, 6), torch.exp(dt * A).view(2, 5, 4, 6),
                            _channels_last(guide), backend="reference")
    for backend in ("reference", "cpu"):
        y = selective_tree_scan_2d(x.view(2, 5, 4, 6), delta.view(2, 5, 4, 6), A, B.view(2, 5, 4),
                                   _channels_last(guide), delta_bias, backend=backend)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_selective_gradcheck_float64(backend):
    (x, delta, A, B, delta_bias), guide = _selective_inputs((1, 3, 3, 3), torch.float64, seed=5)
    order, parent = build_tree(guide)
    inputs = [t.requires_grad_(True) for t in (x, delta / 4, A, B, delta_bias)]  # away from the softplus kink at 20
    assert torch.autograd.gradcheck(
        lambda a, d, s, b, bias: selective_tree_scan(a, d, s, b, order, parent, bias, backend=backend), inputs)


def _readout_inputs(batch, count, channels, dtype, seed=0):
    """y, x, z (z a channel slice of a wider tensor, as GrootV's gate is), C, D, and the two norms' parameters."""
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)
    y, x = 3 * rand(batch, count, channels) + 1, rand(batch, count, channels)
    z = rand(batch, count, 2 * channels)[..., channels:]
    params = [rand(channels), 1 + 0.2 * rand(channels), 0.1 * rand(channels), 1 + 0.2 * rand(channels),
              0.1 * rand(channels)]  # D, h_norm weight / bias, out_norm weight / bias
    tensors = [y, x, z, rand(batch, count)] + params
    return [t.to(dtype) for t in tensors]


def _readout_args(tensors):
    y, x, z, C, D, w1, b1, w2, b2 = tensors
    return y, x, z, C, D, w1, b1, 1e-5, w2, b2, 1e-6


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 5), (1, 9, 160), (2, 3, 37)], ids=lambda s: "x".join(map(str, s)))
def test_readout_matches_reference(backend, dtype, shape):
    require_backend(TREE_SCAN, backend)
    tensors = _readout_inputs(*shape, dtype)
    expected = tree_scan_ref.readout_ref(*_readout_args([t.double() for t in tensors]))
    with torch.no_grad():
        out = tree_scan_readout(*_readout_args(tensors), backend=backend)
    assert out.dtype == dtype and out.shape == shape
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.double(), expected, **tol)


def test_readout_casts_half_precision_gates_to_the_scan_dtype():
    """Under autocast C and z come half precision from their projections: they are widened to y's dtype."""
    tensors = _readout_inputs(2, 6, 24, torch.float32, seed=1)
    tensors[2], tensors[3] = tensors[2].bfloat16(), tensors[3].bfloat16()
    expected = tree_scan_ref.readout_ref(*_readout_args([t.double() for t in tensors]))
    with torch.no_grad():
        out = tree_scan_readout(*_readout_args(tensors), backend="cpu")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_readout_with_gradients_is_differentiable():
    """With inputs needing gradients the read-out is the reference's composition: gradcheck in float64, and the
    float32 forward equals the forward-only op's."""
    tensors = _readout_inputs(1, 4, 6, torch.float64, seed=2)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(lambda *ts: tree_scan_readout(*_readout_args(ts), backend="cpu"), leaves)
    tensors32 = [t.float() for t in tensors]
    with torch.no_grad():
        fast = tree_scan_readout(*_readout_args(tensors32), backend="cpu")
    differentiable = tree_scan_readout(*_readout_args([t.clone().requires_grad_(True) for t in tensors32]),
                                       backend="cpu")
    torch.testing.assert_close(differentiable.detach(), fast, rtol=1e-5, atol=1e-5)


def test_softplus_matches_torch():
    x = torch.cat([torch.linspace(-120, 120, 100_001), torch.tensor([20.0, 20.0001, 19.9999, 88.7, 89.0, 1e30, -1e30])])
    torch.testing.assert_close(tree_scan_ref.softplus(x), F.softplus(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(tree_scan_ref.softplus(x)[x > 20], x[x > 20])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    x, decay, guide = _inputs((1, 2, 3, 3), torch.float64, seed=6)
    order, parent = build_tree(guide, backend=backend)
    decay = (0.1 + 0.8 * decay).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, w: tree_scan(a, w, order, parent, backend=backend),
                                    (x.requires_grad_(True), decay))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_root_decay_is_unused(backend):
    x, decay, guide = _inputs((2, 3, 4, 5), torch.float32, seed=7)
    order, parent = build_tree(guide)
    changed = decay.clone()
    changed[:, 0] = 0.5 * changed[:, 0] + 0.3
    torch.testing.assert_close(tree_scan(x, decay, order, parent, backend=backend),
                               tree_scan(x, changed, order, parent, backend=backend), rtol=0, atol=0)
    decay.requires_grad_(True)
    (grad,) = torch.autograd.grad(tree_scan(x, decay, order, parent, backend=backend).sum(), decay)
    assert torch.all(grad[:, 0] == 0) and grad[:, 1:].abs().sum() > 0


def test_zero_decay_is_identity_and_empty_batch():
    x, decay, guide = _inputs((2, 3, 4, 5), torch.float32, seed=8)
    y = tree_scan_2d(x.view(2, 4, 5, 3), torch.zeros(2, 4, 5, 3), _channels_last(guide))
    torch.testing.assert_close(y, x.view(2, 4, 5, 3), rtol=0, atol=0)
    empty = tree_scan_2d(torch.zeros(0, 4, 5, 3), torch.zeros(0, 4, 5, 3), torch.zeros(0, 4, 5, 4))
    assert empty.shape == (0, 4, 5, 3)


def test_opcheck():
    x, decay, guide = _inputs((2, 3, 3, 4), torch.float32, seed=9)
    order, parent = build_tree(guide)
    torch.library.opcheck(torch.ops.vision2d.tree_build.default, (guide, "cpu"),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.vision2d.tree_scan.default,
                          (x.requires_grad_(True), decay.requires_grad_(True), order, parent, "cpu"))
    torch.library.opcheck(torch.ops.vision2d.tree_scan_readout.default,
                          (*_readout_args(_readout_inputs(2, 5, 8, torch.float32)), "cpu"),
                          test_utils=("test_schema", "test_faketensor"))
    (x, delta, A, B, delta_bias), _ = _selective_inputs((2, 3, 3, 4), torch.float32, seed=9)
    for bias in (delta_bias, None):
        leaves = [t.clone().requires_grad_(True) for t in (x, delta, A, B)]
        torch.library.opcheck(torch.ops.vision2d.selective_tree_scan.default,
                              (*leaves, bias if bias is None else bias.clone().requires_grad_(True), order, parent,
                               "cpu"))


def test_compiles_without_graph_breaks():
    x, decay, guide = _inputs((1, 2, 3, 4), torch.float32, seed=10)
    compiled = torch.compile(lambda a, w, g: tree_scan_2d(a, w, g, backend="cpu"), fullgraph=True, backend="eager")
    shape, guide = (1, 3, 4, 2), _channels_last(guide)
    torch.testing.assert_close(compiled(x.view(shape), decay.view(shape), guide),
                               tree_scan_2d(x.view(shape), decay.view(shape), guide, backend="cpu"))
    (x, delta, A, B, delta_bias), _ = _selective_inputs((1, 2, 3, 4), torch.float32, seed=10)
    compiled = torch.compile(lambda *args: selective_tree_scan_2d(*args, backend="cpu"), fullgraph=True,
                             backend="eager")
    args = (x.view(shape), delta.view(shape), A, B.view(shape[:3]), guide, delta_bias)
    torch.testing.assert_close(compiled(*args), selective_tree_scan_2d(*args, backend="cpu"))
    args = _readout_args(_readout_inputs(1, 5, 8, torch.float32))
    compiled = torch.compile(lambda *a: tree_scan_readout(*a, backend="cpu"), fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), tree_scan_readout(*args, backend="cpu"))


def test_bad_inputs_raise_clear_errors():
    x, decay, guide = _inputs((1, 2, 3, 4), torch.float32)
    order, parent = build_tree(guide)
    with pytest.raises(ValueError, match="guide must be 4-D"):
        build_tree(guide[0])
    with pytest.raises(ValueError, match="no channels"):
        build_tree(guide[:, :0])
    with pytest.raises(TypeError, match="int64"):
        tree_scan(x, decay, order.int(), parent)
    with pytest.raises(ValueError, match="decay must have x's shape"):
        tree_scan(x, decay[:, :, :1], order, parent)
    with pytest.raises(TypeError, match="share one float dtype"):
        tree_scan(x, decay.double(), order, parent)
    with pytest.raises(ValueError, match=r"order must be \(B, L\)"):
        tree_scan(x, decay, order[:, :5], parent)
    swapped = order.clone()
    swapped[:, [1, -1]] = swapped[:, [-1, 1]]  # a leaf before the root's first child
    repeated = order.clone()
    repeated[:, 2] = repeated[:, 1]
    for backend in ("cpu", "reference"):  # checked natively by the cpu backend, with PyTorch by the others
        with pytest.raises(ValueError, match="permutation of 0..L-1 starting at the root"):
            tree_scan(x, decay, order.flip(1), parent, backend=backend)
        with pytest.raises(ValueError, match="permutation of 0..L-1 starting at the root"):
            tree_scan(x, decay, repeated, parent, backend=backend)
        with pytest.raises(ValueError, match="parent must hold vertices"):
            tree_scan(x, decay, order, parent + 100, backend=backend)
        with pytest.raises(ValueError, match="comes before its parent"):
            tree_scan(x, decay, swapped, parent, backend=backend)
    with pytest.raises(ValueError, match="must share B, H, W"):
        tree_scan_2d(x.view(1, 3, 4, 2), decay.view(1, 3, 4, 2), _channels_last(guide)[:, :2])
    with pytest.raises(ValueError, match="unknown .*backend"):
        tree_scan(x, decay, order, parent, backend="cuda")
    (x, delta, A, B, delta_bias), _ = _selective_inputs((1, 2, 3, 4), torch.float32)
    with pytest.raises(ValueError, match="selective_tree_scan: delta must have x's shape"):
        selective_tree_scan(x, delta[:, :, :1], A, B, order, parent)
    with pytest.raises(ValueError, match=r"A must have shape \(2,\)"):
        selective_tree_scan(x, delta, A[:1], B, order, parent)
    with pytest.raises(ValueError, match=r"B must have shape \(1, 12\)"):
        selective_tree_scan(x, delta, A, B.unsqueeze(-1), order, parent)
    with pytest.raises(TypeError, match="delta_bias must be a torch.float32 tensor"):
        selective_tree_scan(x, delta, A, B, order, parent, delta_bias.double())
    with pytest.raises(ValueError, match="a vertex comes before its parent"):
        selective_tree_scan(x, delta, A, B, swapped, parent)
    y, x, z, C, D, w1, b1, w2, b2 = _readout_inputs(1, 4, 6, torch.float32)
    with pytest.raises(ValueError, match=r"C must be \(B, L\)"):
        tree_scan_readout(y, x, z, C[:, :2], D, w1, b1, 1e-5, w2, b2, 1e-5)
    with pytest.raises(ValueError, match=r"out_norm_bias must be \(6,\)"):
        tree_scan_readout(y, x, z, C, D, w1, b1, 1e-5, w2, b2[:3], 1e-5)
    with pytest.raises(ValueError, match="y, x and z must be"):
        tree_scan_readout(y, x[:, :3], z, C, D, w1, b1, 1e-5, w2, b2, 1e-5)
    with pytest.raises(TypeError, match="y must be float32 or float64"):
        tree_scan_readout(y.bfloat16(), x, z, C, D, w1, b1, 1e-5, w2, b2, 1e-5)
