"""The 2D selective scan: reference vs naive loop, every backend vs the reference, the custom-op contract."""
import os

import pytest
import torch

from vision2d.ops import BACKENDS, backend_unavailable_reason, resolve_backend, selective_scan_2d
from vision2d.ops.scan2d_ref import selective_scan_2d_naive, selective_scan_2d_ref, selective_scan_2d_ref_backward
from vision2d.ops.selective_scan_2d import SCAN2D_BACKENDS
from op_harness import assert_matches_reference, require_backend
from scan2d_cases import SHAPES, make_scan_inputs

GRAD_NAMES = ("u", "delta_t", "delta_l", "A_t", "A_l", "B_t", "B_l", "C", "D")


def _require(backend):
    require_backend(SCAN2D_BACKENDS, backend)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_naive_loop(shape, reverse):
    args = make_scan_inputs(*shape, dtype=torch.float64)
    torch.testing.assert_close(selective_scan_2d_ref(*args, reverse=reverse),
                               selective_scan_2d_naive(*args, reverse=reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 2, 3), (1, 1, 3, 2, 2), (1, 4, 1, 1, 2)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("delta_softplus", [True, False])
def test_reference_gradcheck(shape, reverse, delta_softplus):
    args = [t.requires_grad_() for t in make_scan_inputs(*shape, dtype=torch.float64)]
    if not delta_softplus:  # raw deltas must be positive step sizes
        args[1], args[2] = (torch.nn.functional.softplus(a).detach().requires_grad_() for a in args[1:3])
    assert torch.autograd.gradcheck(lambda *a: selective_scan_2d_ref(*a, delta_softplus=delta_softplus,
                                                                     reverse=reverse), args)


@pytest.mark.parametrize("shape", SHAPES[:4])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_d", [True, False])
def test_reference_backward_matches_autograd(shape, reverse, with_d):
    args = [t.requires_grad_() if t is not None else None
            for t in make_scan_inputs(*shape, dtype=torch.float64, with_d=with_d)]
    y = selective_scan_2d_ref(*args, reverse=reverse)
    dy = torch.randn_like(y)
    leaves = [a for a in args if a is not None]
    expected = torch.autograd.grad(y, leaves, dy)
    got = [g for g in selective_scan_2d_ref_backward(dy, *args, reverse=reverse) if g is not None]
    for name, e, g in zip(GRAD_NAMES, expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


def _assert_backend_matches_reference(backend, shape, dtype, reverse, with_d=True, delta_scale=1.0, device="cpu"):
    """Forward and all gradients of `backend` on `device` vs the float64 reference on the CPU (same rounded inputs)."""
    args = make_scan_inputs(*shape, dtype=dtype, with_d=with_d, delta_scale=delta_scale)
    assert_matches_reference(selective_scan_2d, selective_scan_2d_ref, args, GRAD_NAMES, dtype, backend, device=device,
                             reverse=reverse)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_backend_matches_reference(backend, dtype, shape, reverse):
    _require(backend)
    _assert_backend_matches_reference(backend, shape, dtype, reverse)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU sessions only)")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES + [(2, 56, 56, 64, 16), (1, 28, 33, 128, 16)])
@pytest.mark.parametrize("reverse", [False, True])
def test_backend_matches_reference_on_cuda(backend, dtype, shape, reverse):
    _assert_backend_matches_reference(backend, shape, dtype, reverse, device="cuda")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_backend_without_d(backend):
    _require(backend)
    _assert_backend_matches_reference(backend, (2, 4, 3, 3, 4), torch.float32, False, with_d=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_with_large_deltas_stay_finite(backend, dtype):
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton on CPU tensors needs TRITON_INTERPRET=1")
    _require(backend)
    args = make_scan_inputs(1, 6, 40, 4, 16, dtype=dtype, delta_scale=8.0)
    leaves = [a.detach().requires_grad_() for a in args]
    y = selective_scan_2d(*leaves, backend=backend)
    assert torch.isfinite(y).all()
    grads = torch.autograd.grad(y.float().sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_opcheck(backend):
    _require(backend)
    args = [a.requires_grad_() for a in make_scan_inputs(2, 3, 4, 3, 4)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan_2d.default, (*args, True, True, backend))


def test_non_contiguous_inputs_work():
    args = list(make_scan_inputs(2, 5, 4, 3, 4))
    # channels-first storage permuted to channels-last, and B/C as views of one projection like the model produces
    u = args[0].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    proj = torch.cat(args[5:8], dim=-1)
    b_t, b_l, c = proj.split(4, dim=-1)
    assert not u.is_contiguous() and not b_t.is_contiguous()
    y = selective_scan_2d(u, args[1], args[2], args[3], args[4], b_t, b_l, c, args[8])
    torch.testing.assert_close(y, selective_scan_2d_ref(*args))


def test_bad_inputs_raise_clear_errors():
    args = list(make_scan_inputs(2, 3, 4, 3, 4))
    with pytest.raises(ValueError, match="4-D"):
        selective_scan_2d(args[0][0], *args[1:])
    bad = list(args)
    bad[5] = args[5][..., :3]
    with pytest.raises(ValueError, match="B_t must have shape"):
        selective_scan_2d(*bad)
    bad = list(args)
    bad[1] = args[1].double()
    with pytest.raises(TypeError, match="delta_t has dtype"):
        selective_scan_2d(*bad)
    bad = list(args)
    bad[0] = args[0].to(torch.int32)
    with pytest.raises(TypeError, match="u has dtype"):
        selective_scan_2d(*bad)
    bad = list(args)
    bad[8] = args[8][:2]
    with pytest.raises(ValueError, match="D must have shape"):
        selective_scan_2d(*bad)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan_2d(*args, backend="cuda-magic")


def test_backend_choice_is_reported_and_overridable(monkeypatch):
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "reference")
    assert resolve_backend("cpu") == "reference"
    monkeypatch.delenv("VISION2D_SCAN_BACKEND")
    assert resolve_backend("cpu", "reference") == "reference"
    assert resolve_backend("cpu") in BACKENDS
    if backend_unavailable_reason("triton", torch.device("cpu")) is not None:
        with pytest.raises(RuntimeError, match="'triton' cannot run on cpu"):
            resolve_backend("cpu", "triton")


def test_meta_device_and_compile():
    args = make_scan_inputs(1, 4, 5, 3, 4)
    meta = [a.to("meta") for a in args]
    assert selective_scan_2d(*meta, backend="reference").shape == (1, 4, 5, 3)

    def f(*a):
        return selective_scan_2d(*a, backend="reference", reverse=True).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), f(*args))


@pytest.mark.parametrize("H, W", [(0, 5), (4, 0), (0, 0)])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_scans_an_empty_image(H, W, reverse):
    leaves = [a.requires_grad_() for a in make_scan_inputs(2, H, W, 3, 4)]
    y = selective_scan_2d(*leaves, reverse=reverse, backend="reference")
    assert y.shape == (2, H, W, 3)
    grads = torch.autograd.grad(y.sum(), leaves)
    for name, grad, leaf in zip(GRAD_NAMES, grads, leaves):
        assert grad.shape == leaf.shape and not grad.any(), name


def _unread_masks(H, W, reverse):
    """(unread by the top step, unread by the left step), each (H, W, 1): row 0 for T, column 0 below it for L
    (the last row and column, scanning in reverse)."""
    row = torch.zeros(H, W, 1, dtype=torch.bool)
    row[-1 if reverse else 0] = True
    column = torch.zeros(H, W, 1, dtype=torch.bool)
    if reverse:
        column[:-1, -1] = True
    else:
        column[1:, 0] = True
    return row, column


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("delta_softplus", [True, False])
def test_reference_ignores_inputs_the_recurrence_never_reads(reverse, delta_softplus):
    """NaN in delta_t/B_t on the first row, in delta_l/B_l in the first column, and closed gates (A = -inf) give the
    naive loop's finite outputs, finite gradients, and zero gradients for the unread entries."""
    clean = list(make_scan_inputs(2, 4, 5, 3, 4, dtype=torch.float64))
    if not delta_softplus:
        clean[1], clean[2] = (torch.nn.functional.softplus(a) for a in clean[1:3])
    clean[3][0, 1] = clean[4][2, 0] = -float("inf")
    unread_t, unread_l = _unread_masks(4, 5, reverse)
    poisoned = list(clean)
    for index, unread in ((1, unread_t), (5, unread_t), (2, unread_l), (6, unread_l)):
        poisoned[index] = clean[index].masked_fill(unread, float("nan"))
    leaves = [a.clone().requires_grad_() for a in poisoned]
    y = selective_scan_2d(*leaves, delta_softplus=delta_softplus, reverse=reverse, backend="reference")
    torch.testing.assert_close(y, selective_scan_2d_naive(*clean, delta_softplus=delta_softplus, reverse=reverse))
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    clean_grads = selective_scan_2d_ref_backward(dy, *clean, delta_softplus=delta_softplus, reverse=reverse)
    for name, grad, clean_grad in zip(GRAD_NAMES, grads, clean_grads):
        assert torch.isfinite(grad).all(), f"grad of {name} is not finite"
        torch.testing.assert_close(grad, clean_grad, msg=lambda m: f"grad of {name}: {m}")
    for index, unread in ((1, unread_t), (5, unread_t), (2, unread_l), (6, unread_l)):
        assert not grads[index].masked_select(unread).any(), f"unread entries of {GRAD_NAMES[index]} get gradient"


def test_channels_first_u_is_named_as_such():
    args = list(make_scan_inputs(1, 5, 6, 3, 4))
    args[0] = args[0].permute(0, 3, 1, 2)  # (B, E, H, W)
    with pytest.raises(ValueError, match=r"u \(1, 3, 5, 6\) looks channels-first .* must be channels-last"):
        selective_scan_2d(*args)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_forward_mode_ad_raises_instead_of_zero_tangents(backend):
    args = make_scan_inputs(1, 3, 4, 2, 2, dtype=torch.float64)
    tangents = tuple(torch.randn_like(a) for a in args)
    with pytest.raises(NotImplementedError, match="no forward-mode AD"):
        torch.func.jvp(lambda *a: selective_scan_2d(*a, backend=backend), tuple(args), tangents)
    with torch.autograd.forward_ad.dual_level(), pytest.raises(NotImplementedError, match="no forward-mode AD"):
        selective_scan_2d(torch.autograd.forward_ad.make_dual(args[0], tangents[0]), *args[1:], backend=backend)
    # forward mode through the reference math works
    _, tangent = torch.func.jvp(selective_scan_2d_ref, tuple(args), tangents)
    assert tangent.abs().max() > 0


def test_backend_auto_is_accepted_as_documented():
    args = make_scan_inputs(1, 4, 5, 3, 4)
    torch.testing.assert_close(selective_scan_2d(*args, backend="auto"), selective_scan_2d_ref(*args),
                               rtol=1e-4, atol=1e-5)
