"""The 1D selective scan: reference vs naive loop, scan orders, every backend vs the reference, the custom-op
contract."""
import pytest
import torch

from vision2d.ops import cross_scan_orders, selective_scan, selective_scan_ref
from vision2d.ops.selective_scan import SELECTIVE_SCAN_BACKENDS
from vision2d.ops.selective_scan_ref import selective_scan_naive, selective_scan_ref_backward
from op_harness import assert_matches_reference, require_backend
from selective_scan_cases import SHAPES, make_inputs, make_low_rank_inputs, random_orders

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
LOW_RANK_GRAD_NAMES = GRAD_NAMES + ("delta_proj_weight",)
# (batch, L, K, E, N, R); K R <= 48 projects with the block-diagonal weight, the last (K R = 52) with batched products
LOW_RANK_SHAPES = [(2, 7, 4, 5, 1, 2), (1, 9, 2, 18, 16, 3), (2, 6, 4, 33, 1, 1), (1, 5, 4, 7, 2, 13)]


def with_delta_projection(scan):
    """`scan` taking delta_proj_weight as its 8th positional argument (so the test harness checks its gradient)."""
    return lambda *args, **kwargs: scan(*args[:7], delta_proj_weight=args[7], **kwargs)


BACKENDS = [b for b in SELECTIVE_SCAN_BACKENDS.names if b != "triton"]  # triton: test_selective_scan_triton.py


def _require(backend):
    require_backend(SELECTIVE_SCAN_BACKENDS, backend)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("ordered", [True, False])
def test_reference_matches_naive_loop(shape, merge, ordered):
    u, delta, A, B, C, D, bias = make_inputs(*shape, dtype=torch.float64)
    order = random_orders(shape[2], shape[1]) if ordered else None
    kwargs = dict(delta_softplus=True, order=order, merge=merge)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C, D, bias, **kwargs),
                               selective_scan_naive(u, delta, A, B, C, D, bias, **kwargs), rtol=1e-12, atol=1e-12)


def test_reference_equals_separate_scans_of_reordered_sequences():
    """Direction k with order o is the plain scan of the sequence gathered along o, scattered back."""
    u, delta, A, B, C, D, bias = make_inputs(2, 6, 4, 3, 4, dtype=torch.float64)
    order = cross_scan_orders(2, 3)
    y = selective_scan_ref(u, delta, A, B, C, D, bias, delta_softplus=True, order=order, merge=False)
    for k in range(4):
        o = order[k]
        y_k = selective_scan_ref(u[:, o], delta[:, o, k:k + 1], A[k:k + 1], B[:, o, k:k + 1], C[:, o, k:k + 1],
                                 D[k:k + 1], bias[k:k + 1], delta_softplus=True, merge=True)
        torch.testing.assert_close(y[:, o, k], y_k, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", LOW_RANK_SHAPES[:2])
@pytest.mark.parametrize("merge", [True, False])
def test_reference_delta_projection_matches_naive_loop_and_projected_delta(shape, merge):
    u, delta, A, B, C, D, bias, weight = make_low_rank_inputs(*shape, dtype=torch.float64)
    order = random_orders(shape[2], shape[1])
    kwargs = dict(delta_softplus=True, order=order, merge=merge)
    y = selective_scan_ref(u, delta, A, B, C, D, bias, delta_proj_weight=weight, **kwargs)
    torch.testing.assert_close(y, selective_scan_naive(u, delta, A, B, C, D, bias, delta_proj_weight=weight, **kwargs),
                               rtol=1e-12, atol=1e-12)
    projected = torch.einsum("blkr,ker->blke", delta, weight)
    torch.testing.assert_close(y, selective_scan_ref(u, projected, A, B, C, D, bias, **kwargs), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("merge", [True, False])
def test_reference_backward_with_delta_projection_matches_autograd(merge):
    u, delta, A, B, C, D, bias, weight = make_low_rank_inputs(2, 7, 4, 5, 4, 3, dtype=torch.float64)
    args = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias, weight)]
    order = random_orders(4, 7, seed=2)
    y = selective_scan_ref(*args[:7], delta_softplus=True, order=order, merge=merge, delta_proj_weight=args[7])
    dy = torch.randn_like(y)
    expected = torch.autograd.grad(y, args, dy)
    got = selective_scan_ref_backward(dy, *args[:7], True, order, merge, args[7])
    for name, e, g in zip(LOW_RANK_GRAD_NAMES, expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


def test_cross_scan_orders_follow_vmamba():
    H, W = 3, 5
    x = torch.arange(H * W).view(1, H, W)  # pixel ids, row-major
    row, col = x.flatten(1), x.transpose(1, 2).flatten(1)  # VMamba's CrossScan: rows, columns and both reversed
    expected = torch.cat([row, col, row.flip(-1), col.flip(-1)])
    assert torch.equal(cross_scan_orders(H, W), expected)
    assert cross_scan_orders(0, 4).shape == (4, 0)


@pytest.mark.parametrize("shape", [(2, 5, 2, 3, 2), (1, 1, 1, 2, 1), (1, 4, 4, 2, 3)])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("delta_softplus", [True, False])
def test_reference_gradcheck(shape, merge, delta_softplus):
    u, delta, A, B, C, D, bias = make_inputs(*shape, dtype=torch.float64)
    if not delta_softplus:  # raw deltas must be positive step sizes
        delta, bias = torch.nn.functional.softplus(delta), bias.abs()
    order = random_orders(shape[2], shape[1], seed=3)
    args = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_ref(*a, delta_softplus=delta_softplus, order=order, merge=merge), args)


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("optional", [True, False])
def test_reference_backward_matches_autograd(shape, merge, optional):
    u, delta, A, B, C, D, bias = make_inputs(*shape, dtype=torch.float64, with_d=optional, with_bias=optional)
    args = [t.requires_grad_() if t is not None else None for t in (u, delta, A, B, C, D, bias)]
    order = random_orders(shape[2], shape[1], seed=2)
    y = selective_scan_ref(*args, delta_softplus=True, order=order, merge=merge)
    dy = torch.randn_like(y)
    expected = torch.autograd.grad(y, [a for a in args if a is not None], dy)
    got = [g for g in selective_scan_ref_backward(dy, *args, True, order, merge) if g is not None]
    assert len(got) == len(expected)
    for name, e, g in zip(GRAD_NAMES, expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


def assert_backend_matches_reference(backend, shape, dtype, merge=True, ordered=True, with_d=True, with_bias=True,
                                     delta_softplus=True, delta_scale=1.0, device="cpu"):
    """Forward and all gradients of `backend` on `device` vs the float64 reference (same rounded inputs)."""
    args = make_inputs(*shape, dtype=dtype, with_d=with_d, with_bias=with_bias, delta_scale=delta_scale)
    if not delta_softplus:  # raw deltas must be positive step sizes
        args = (args[0], torch.nn.functional.softplus(args[1].double()).to(dtype), *args[2:])
    order = random_orders(shape[2], shape[1], seed=1) if ordered else None
    assert_matches_reference(selective_scan, selective_scan_ref, args, GRAD_NAMES, dtype, backend, device,
                             delta_softplus=delta_softplus, order=order, merge=merge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("merge", [True, False])
def test_backend_matches_reference(backend, dtype, shape, merge):
    _require(backend)
    assert_backend_matches_reference(backend, shape, dtype, merge=merge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(ordered=False), dict(with_d=False, with_bias=False),
                                     dict(delta_softplus=False, with_bias=False), dict(delta_scale=8.0)])
def test_backend_options(backend, options):
    _require(backend)
    assert_backend_matches_reference(backend, (2, 9, 4, 5, 4), torch.float32, **options)


def assert_backend_with_delta_projection_matches_reference(backend, shape, dtype, merge=True, device="cpu"):
    """Forward and all gradients (delta_proj_weight's included) with a low-rank delta vs the float64 reference."""
    args = make_low_rank_inputs(*shape, dtype=dtype)
    order = random_orders(shape[2], shape[1], seed=1)
    assert_matches_reference(with_delta_projection(selective_scan), with_delta_projection(selective_scan_ref), args,
                             LOW_RANK_GRAD_NAMES, dtype, backend, device, delta_softplus=True, order=order,
                             merge=merge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", LOW_RANK_SHAPES)
@pytest.mark.parametrize("merge", [True, False])
def test_backend_with_delta_projection_matches_reference(backend, dtype, shape, merge):
    _require(backend)
    assert_backend_with_delta_projection_matches_reference(backend, shape, dtype, merge=merge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("merge", [True, False])
def test_rank_zero_delta_projection(backend, merge):
    """An empty delta projection (R = 0) projects to 0, so delta is the bias alone (the cpu kernel once read the empty
    weight as no projection and crashed)."""
    _require(backend)
    u, delta, A, B, C, D, bias = make_inputs(2, 5, 2, 3, 4)
    args = [t.requires_grad_() for t in (u, delta.new_zeros(2, 5, 2, 0), A, B, C, D, bias, A.new_zeros(2, 3, 0))]
    order = random_orders(2, 5)
    y = selective_scan(*args[:7], True, order, merge, backend, delta_proj_weight=args[7])
    y_ref = selective_scan_ref(*args[:7], True, order, merge, delta_proj_weight=args[7])
    torch.testing.assert_close(y, y_ref)
    grads, grads_ref = (torch.autograd.grad(out.square().sum(), args) for out in (y, y_ref))
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence(backend):
    _require(backend)
    args = [a.requires_grad_() for a in make_inputs(2, 0, 4, 3, 1)]
    y = selective_scan(*args, delta_softplus=True, backend=backend)
    assert y.shape == (2, 0, 3)
    grads = torch.autograd.grad(y.sum(), args, allow_unused=True)
    assert grads[2] is None or not grads[2].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("merge", [True, False])
def test_opcheck(backend, merge):
    _require(backend)
    args = [a.requires_grad_() for a in make_inputs(2, 5, 2, 3, 4)]
    order = random_orders(2, 5)
    torch.library.opcheck(torch.ops.vision2d.selective_scan.default, (*args, order, True, merge, backend))
    *low_rank, weight = [a.requires_grad_() for a in make_low_rank_inputs(2, 5, 2, 3, 4, 2)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan.default, (*low_rank, order, True, merge, backend, weight))


def assert_periodic_inputs_match_written_out_copies(backend, merge, low_rank, device="cpu", copies=3):
    """An order over `copies` L positions with per-pixel inputs of L positions equals the scan of the inputs written
    out `copies` times (forward, and every gradient through the copies)."""
    make = (lambda: make_low_rank_inputs(2, 5, 2, 6, 3, 2)) if low_rank else (lambda: make_inputs(2, 5, 2, 6, 3))
    inputs = [None if t is None else t.to(device).requires_grad_() for t in make()]
    u, delta, A, B, C, D, bias, *weight = inputs
    order = random_orders(2, copies * 5, seed=2, device=device)
    weight = weight[0] if weight else None
    y = selective_scan(u, delta, A, B, C, D, bias, True, order, merge, backend, weight)
    repeated = [t.repeat(1, copies, *([1] * (t.dim() - 2))) for t in (u, delta, B, C)]
    y_copies = selective_scan(repeated[0], repeated[1], A, repeated[2], repeated[3], D, bias, True, order, merge,
                              backend, weight)
    assert y.shape == y_copies.shape == ((2, copies * 5, 6) if merge else (2, copies * 5, 2, 6))
    torch.testing.assert_close(y, y_copies, rtol=1e-5, atol=1e-5)
    leaves = [t for t in inputs if t is not None]
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
    for g, g_copies in zip(torch.autograd.grad(y, leaves, dy), torch.autograd.grad(y_copies, leaves, dy)):
        torch.testing.assert_close(g, g_copies, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("low_rank", [True, False])
def test_periodic_inputs_match_written_out_copies(backend, merge, low_rank):
    """MSVMamba's three-segment scan reads the small map three times without copying it."""
    _require(backend)
    assert_periodic_inputs_match_written_out_copies(backend, merge, low_rank)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_periodic_inputs(backend):
    _require(backend)
    *low_rank, weight = [a.requires_grad_() for a in make_low_rank_inputs(2, 4, 1, 3, 2, 2)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan.default,
                          (*low_rank, random_orders(1, 12), True, True, backend, weight))


def test_non_contiguous_inputs_work():
    u, delta, A, B, C, D, bias = make_inputs(2, 6, 2, 3, 4)
    proj = torch.cat([delta, torch.cat([B, C], dim=-1)], dim=-1)  # B, C as views of one projection, like the model
    d_view, b_view, c_view = proj.split([3, 4, 4], dim=-1)
    assert not b_view.is_contiguous()
    order = cross_scan_orders(2, 3)[:2]
    y = selective_scan(u.transpose(0, 1).contiguous().transpose(0, 1), d_view, A, b_view, c_view, D, bias, True,
                       order=order)
    torch.testing.assert_close(y, selective_scan_ref(u, delta, A, B, C, D, bias, True, order))


def test_bad_inputs_raise_clear_errors():
    u, delta, A, B, C, D, bias = make_inputs(2, 6, 2, 3, 4)
    with pytest.raises(ValueError, match="u must be 3-D"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match=r"delta must have shape \(2, 6, 2, 3\)"):
        selective_scan(u, delta[:, :, :1], A, B, C)
    with pytest.raises(ValueError, match=r"A must be \(K, E, N\)"):
        selective_scan(u, delta, A[:, :2], B, C)
    with pytest.raises(ValueError, match=r"C must have shape \(2, 6, 2, 4\)"):
        selective_scan(u, delta, A, B, C[..., :3])
    with pytest.raises(ValueError, match=r"D must have shape \(2, 3\)"):
        selective_scan(u, delta, A, B, C, D.flatten())
    with pytest.raises(ValueError, match=r"delta_bias must have shape \(2, 3\)"):
        selective_scan(u, delta, A, B, C, D, bias[:1])
    with pytest.raises(TypeError, match="B has dtype torch.float64 but u has torch.float32"):
        selective_scan(u, delta, A, B.double(), C)
    with pytest.raises(TypeError, match="u has dtype torch.int32"):
        selective_scan(u.int(), delta, A, B, C)
    with pytest.raises(ValueError, match=r"order must be \(K, L\) = \(2, 6\), or \(K, s L\)"):
        selective_scan(u, delta, A, B, C, order=cross_scan_orders(2, 3))
    with pytest.raises(ValueError, match=r"order must be \(K, L\) = \(2, 6\).*got \(2, 9\)"):
        selective_scan(u, delta, A, B, C, order=random_orders(2, 9))
    with pytest.raises(TypeError, match="order must be int64"):
        selective_scan(u, delta, A, B, C, order=cross_scan_orders(2, 3)[:2].int())
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(u, delta, A, B, C, backend="cuda-magic")
    weight = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"delta must have shape \(2, 6, 2, 5\) .*R from delta_proj_weight"):
        selective_scan(u, delta, A, B, C, delta_proj_weight=weight)
    with pytest.raises(ValueError, match=r"delta_proj_weight must be \(K, E, R\) = \(2, 3, R\)"):
        selective_scan(u, delta, A, B, C, delta_proj_weight=weight[:, :2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["repeated", "negative", "too large"])
def test_orders_that_are_not_permutations_raise(backend, bad):
    _require(backend)
    args = make_inputs(2, 6, 2, 3, 4)
    order = cross_scan_orders(2, 3)[:2].clone()
    order[1, 4] = {"repeated": order[1, 3], "negative": -1, "too large": 6}[bad]
    with pytest.raises(ValueError, match="every row of order must be a permutation"):
        selective_scan(*args, order=order, backend=backend)


def test_meta_device_and_compile():
    u, delta, A, B, C, D, bias = make_inputs(1, 6, 4, 3, 1)
    meta = [a.to("meta") for a in (u, delta, A, B, C, D, bias)]
    assert selective_scan(*meta, order=cross_scan_orders(2, 3, device="meta")).shape == (1, 6, 3)
    assert selective_scan(*meta, merge=False).shape == (1, 6, 4, 3)

    low_rank = make_low_rank_inputs(1, 6, 4, 3, 1, 2)
    assert selective_scan(*[a.to("meta") for a in low_rank[:7]], merge=False,
                          delta_proj_weight=low_rank[7].to("meta")).shape == (1, 6, 4, 3)

    def f(*a):
        return selective_scan(*a, delta_softplus=True, order=cross_scan_orders(3, 2)).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(u, delta, A, B, C, D, bias), f(u, delta, A, B, C, D, bias))


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "reference")
    assert SELECTIVE_SCAN_BACKENDS.resolve("cpu") == "reference"
    monkeypatch.delenv("VISION2D_SCAN_BACKEND")
    expected = "cpu" if SELECTIVE_SCAN_BACKENDS.unavailable_reason("cpu", "cpu") is None else "reference"
    assert SELECTIVE_SCAN_BACKENDS.resolve("cpu") == expected
    assert SELECTIVE_SCAN_BACKENDS.resolve("meta") == "reference"


def test_export():
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, bias, order):
            return selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True, order=order)

    args = (*make_inputs(1, 6, 4, 3, 2), cross_scan_orders(2, 3))
    exported = torch.export.export(Scan(), args)
    assert "vision2d.selective_scan" in str(exported.graph)
    torch.testing.assert_close(exported.module()(*args), Scan()(*args))
