"""The two-pass 2D selective scan (2DVMamba): reference vs naive loop of the one-recurrence form, the written-out
backward vs autograd, every backend vs the float64 reference, the cpu kernel's threads and checkpointed backward, and
the custom-op contract."""
import pytest
import torch

from vision2d.ops import selective_scan_2pass, selective_scan_2pass_cpu
from vision2d.ops.selective_scan_2pass import SCAN_2PASS_BACKENDS
from vision2d.ops.selective_scan_2pass_ref import (grid_position, selective_scan_2pass_naive,
                                                   selective_scan_2pass_ref, selective_scan_2pass_ref_backward)
from op_harness import assert_matches_reference, require_backend
from selective_scan_cases import make_inputs

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
BACKENDS = [b for b in SCAN_2PASS_BACKENDS.names if b != "triton"]  # triton: test_selective_scan_2pass_triton.py
# (batch, H, W, E, N): 1-pixel rows and columns, a single pixel, non-square both ways, N in {1, 4, 16}, odd E
SHAPES = [(2, 3, 4, 5, 1), (1, 1, 6, 3, 4), (1, 5, 1, 2, 1), (1, 1, 1, 3, 2), (2, 4, 3, 17, 16), (1, 6, 5, 33, 1)]


def inputs(batch, H, W, E, N, dtype=torch.float32, **options):
    return make_inputs(batch, H * W, 4, E, N, dtype=dtype, **options)


@pytest.mark.parametrize("shape", SHAPES[:5])
@pytest.mark.parametrize("merge", [True, False])
def test_reference_matches_naive_loop(shape, merge):
    batch, H, W, E, N = shape
    args = inputs(*shape, dtype=torch.float64)
    kwargs = dict(delta_softplus=True, height=H, width=W, merge=merge)
    torch.testing.assert_close(selective_scan_2pass_ref(*args, **kwargs), selective_scan_2pass_naive(*args, **kwargs),
                               rtol=1e-12, atol=1e-12)


def test_directions_are_the_official_cross_scan_grids():
    """Direction k is the row-then-column scan of the official k-th cross-scan sequence read as its grid: xs[0] the
    row-major flatten on (H, W), xs[1] the column-major flatten on (W, H), xs[2] and xs[3] those reversed."""
    H, W = 3, 4
    pixels = torch.arange(H * W).view(H, W)
    official = [pixels.flatten(), pixels.t().flatten(), pixels.flatten().flip(0), pixels.t().flatten().flip(0)]
    for k in range(4):
        rows, cols = (H, W) if k % 2 == 0 else (W, H)
        ours = torch.tensor([grid_position(k, i, j, H, W) for i in range(rows) for j in range(cols)])
        assert torch.equal(ours, official[k])


def test_state_sums_over_the_quadrant():
    """A single input at one pixel reaches exactly the pixels of its quadrant in each direction (an impulse test of
    the 2D, not 1D, semantics): below-right for k = 0, 1 and above-left for k = 2, 3."""
    H, W, E = 4, 5, 1
    u, delta, A, B, C, D, bias = inputs(1, H, W, E, 1, dtype=torch.float64)
    u = torch.zeros_like(u)
    u[0, 2 * W + 2] = 1.0
    y = selective_scan_2pass_ref(u, delta, A, B.abs() + 0.1, C.abs() + 0.1, None, bias, True, height=H, width=W,
                                 merge=False)[0, :, :, 0].view(H, W, 4)
    rows, cols = torch.arange(H).view(H, 1), torch.arange(W).view(1, W)
    below_right, above_left = (rows >= 2) & (cols >= 2), (rows <= 2) & (cols <= 2)
    for k, quadrant in enumerate([below_right, below_right, above_left, above_left]):
        assert torch.equal(y[..., k] != 0, quadrant), k


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("optional", [True, False])
def test_reference_backward_matches_autograd(shape, merge, optional):
    batch, H, W, E, N = shape
    args = inputs(*shape, dtype=torch.float64, with_d=optional, with_bias=optional)
    args = [t.requires_grad_() if t is not None else None for t in args]
    y = selective_scan_2pass_ref(*args, delta_softplus=True, height=H, width=W, merge=merge)
    dy = torch.randn_like(y)
    expected = torch.autograd.grad(y, [a for a in args if a is not None], dy)
    got = [g for g in selective_scan_2pass_ref_backward(dy, *args, True, H, W, merge) if g is not None]
    assert len(got) == len(expected)
    for name, e, g in zip(GRAD_NAMES, expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


def test_reference_gradcheck():
    args = [t.requires_grad_() for t in inputs(1, 2, 3, 2, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan_2pass_ref(*a, delta_softplus=True, height=2, width=3, merge=True), args)


def assert_backend_matches_reference(backend, shape, dtype, merge=True, device="cpu", delta_softplus=True,
                                     **options):
    """Forward and all gradients of `backend` on `device` vs the float64 reference (same rounded inputs)."""
    batch, H, W, E, N = shape
    args = inputs(*shape, dtype=dtype, **options)
    if not delta_softplus:  # raw deltas must be positive step sizes
        args = (args[0], torch.nn.functional.softplus(args[1].double()).to(dtype), *args[2:])
    assert_matches_reference(selective_scan_2pass, selective_scan_2pass_ref, args, GRAD_NAMES, dtype, backend,
                             device, delta_softplus=delta_softplus, height=H, width=W, merge=merge)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_backend_matches_reference(backend, dtype, shape):
    require_backend(SCAN_2PASS_BACKENDS, backend)
    assert_backend_matches_reference(backend, shape, dtype, merge=shape[0] == 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(merge=False), dict(with_d=False, with_bias=False),
                                     dict(delta_softplus=False, with_bias=False), dict(delta_scale=8.0)])
def test_backend_options(backend, options):
    require_backend(SCAN_2PASS_BACKENDS, backend)
    assert_backend_matches_reference(backend, (2, 3, 5, 6, 4), torch.float32, **options)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("budget", [0, 4 << 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_threads_and_checkpointed_backward(monkeypatch, threads, num_threads, budget, dtype):
    """Channel blocks split into groups across threads (E = 40: a partial block), and with no state budget the
    backward restarts segments of ceil(sqrt(H)) rows (H = 7: segments of 3) from checkpointed state rows."""
    require_backend(SCAN_2PASS_BACKENDS, "cpu")
    threads(num_threads)
    monkeypatch.setattr(selective_scan_2pass_cpu, "STATE_BUDGET_BYTES", budget)
    assert_backend_matches_reference("cpu", (1, 7, 4, 40, 2), dtype, merge=num_threads == 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 0, 3), (2, 3, 0)])
def test_empty_image(backend, shape):
    require_backend(SCAN_2PASS_BACKENDS, backend)
    batch, H, W = shape
    args = [a.requires_grad_() for a in inputs(batch, H, W, 3, 1)]
    y = selective_scan_2pass(*args, delta_softplus=True, height=H, width=W, backend=backend)
    assert y.shape == (2, 0, 3)
    grads = torch.autograd.grad(y.sum(), args, allow_unused=True)
    assert grads[2] is None or not grads[2].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("merge", [True, False])
def test_opcheck(backend, merge):
    require_backend(SCAN_2PASS_BACKENDS, backend)
    args = [a.requires_grad_() for a in inputs(2, 2, 3, 3, 2)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan_2pass.default, (*args, True, 2, 3, merge, backend))


def test_non_contiguous_inputs_work():
    u, delta, A, B, C, D, bias = inputs(2, 2, 3, 3, 4)
    proj = torch.cat([delta, torch.cat([B, C], dim=-1)], dim=-1)  # B, C as views of one projection, like the model
    d_view, b_view, c_view = proj.split([3, 4, 4], dim=-1)
    assert not b_view.is_contiguous()
    y = selective_scan_2pass(u.transpose(0, 1).contiguous().transpose(0, 1), d_view, A, b_view, c_view, D, bias, True,
                             height=2, width=3)
    torch.testing.assert_close(y, selective_scan_2pass_ref(u, delta, A, B, C, D, bias, True, 2, 3))


def test_meta_device_and_compile():
    u, delta, A, B, C, D, bias = inputs(1, 2, 3, 3, 1)
    meta = [a.to("meta") for a in (u, delta, A, B, C, D, bias)]
    assert selective_scan_2pass(*meta, height=2, width=3).shape == (1, 6, 3)
    assert selective_scan_2pass(*meta, height=3, width=2, merge=False).shape == (1, 6, 4, 3)

    def f(*a):
        return selective_scan_2pass(*a, delta_softplus=True, height=3, width=2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(u, delta, A, B, C, D, bias), f(u, delta, A, B, C, D, bias))


def test_bad_inputs_raise_clear_errors():
    u, delta, A, B, C, D, bias = inputs(2, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="u must be 3-D"):
        selective_scan_2pass(u[0], delta, A, B, C, height=2, width=3)
    with pytest.raises(ValueError, match=r"u has 6 pixels but height \* width = 3 \* 3 = 9"):
        selective_scan_2pass(u, delta, A, B, C, height=3, width=3)
    with pytest.raises(ValueError, match="height must be an int >= 0"):
        selective_scan_2pass(u, delta, A, B, C, height=2.0, width=3)
    with pytest.raises(ValueError, match=r"A must be \(K, E, N\) with K = 4 directions"):
        selective_scan_2pass(u, delta[:, :, :2], A[:2], B, C, height=2, width=3)
    with pytest.raises(ValueError, match=r"delta must have shape \(2, 6, 4, 3\)"):
        selective_scan_2pass(u, delta[:, :, :2], A, B, C, height=2, width=3)
    with pytest.raises(ValueError, match=r"C must have shape \(2, 6, 4, 4\)"):
        selective_scan_2pass(u, delta, A, B, C[..., :3], height=2, width=3)
    with pytest.raises(ValueError, match=r"delta_bias must have shape \(4, 3\)"):
        selective_scan_2pass(u, delta, A, B, C, D, bias[:1], height=2, width=3)
    with pytest.raises(TypeError, match="B has dtype torch.float64 but u has torch.float32"):
        selective_scan_2pass(u, delta, A, B.double(), C, height=2, width=3)
    with pytest.raises(TypeError, match="u has dtype torch.int32"):
        selective_scan_2pass(u.int(), delta, A, B, C, height=2, width=3)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan_2pass(u, delta, A, B, C, height=2, width=3, backend="cuda-magic")
    with pytest.raises(TypeError):
        selective_scan_2pass(u, delta, A, B, C)  # height and width are required keywords
