"""Spatial-Mamba's ops: `state_scan` (the selective scan returning its states), `state_fusion` (depthwise conv over
border-replicated maps) and `state_scan_fusion` (both with the C read-out): references vs naive loops, every backend vs
the float64 reference, the custom-op contract, the dilated-kernel merge, bad input."""
import pytest
import torch
import torch.nn.functional as F

from vision2d.ops import merge_dilated_kernels, state_fusion, state_scan, state_scan_fusion
from vision2d.ops.state_fusion import STATE_FUSION_BACKENDS
from vision2d.ops.state_fusion_ref import state_fusion_naive, state_fusion_ref
from vision2d.ops.state_scan import STATE_SCAN_BACKENDS
from vision2d.ops.state_scan_fusion import state_scan_fusion_ref
from vision2d.ops.state_scan_ref import state_scan_naive, state_scan_ref, state_scan_ref_backward
from op_harness import DTYPES, assert_matches_reference, require_backend
from state_fusion_cases import (FUSION_SHAPES, SCAN_FUSION_SHAPES, SCAN_SHAPES, make_fusion_inputs,
                                make_norm_and_gate, make_scan_fusion_inputs, make_scan_inputs)

BACKENDS = ["reference", "cpu"]  # triton: test_state_fusion_triton.py


def scan_in_input_dtype(u, delta, A, B, delta_bias, backend, delta_softplus=True):
    """The states cast to u's dtype (the harness compares outputs in the input dtype)."""
    return state_scan(u, delta, A, B, delta_bias, delta_softplus=delta_softplus, backend=backend).to(u.dtype)


def scan_reference(u, delta, A, B, delta_bias, delta_softplus=True):
    return state_scan_ref(u, delta, A, B, delta_bias, delta_softplus)


@pytest.mark.parametrize("shape", SCAN_SHAPES[:3])
def test_scan_reference_matches_naive_loop_and_autograd(shape):
    u, delta, A, B, bias = make_scan_inputs(*shape, dtype=torch.float64)
    h = state_scan_ref(u, delta, A, B, bias, True)
    torch.testing.assert_close(h, state_scan_naive(u, delta, A, B, bias, True), rtol=1e-12, atol=1e-12)
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, bias)]
    dh = torch.randn_like(h)
    expected = torch.autograd.grad(state_scan_ref(*leaves, True), leaves, dh)
    for e, g in zip(expected, state_scan_ref_backward(dh, u, delta, A, B, bias, True, h)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", FUSION_SHAPES[:3])
def test_fusion_reference_matches_naive_loop(shape):
    x, weight = make_fusion_inputs(*shape, dtype=torch.float64)
    torch.testing.assert_close(state_fusion_ref(x, weight.double()), state_fusion_naive(x, weight), rtol=1e-12,
                               atol=1e-12)


def _cases(shapes):
    """Every dtype on the first two shapes, fp32 on the others."""
    return [(shape, dtype) for shape in shapes[:2] for dtype in DTYPES] + [(shape, "fp32") for shape in shapes[2:]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dtype", _cases(SCAN_SHAPES))
def test_scan_backends_match_reference(backend, dtype, shape):
    require_backend(STATE_SCAN_BACKENDS, backend)
    args = make_scan_inputs(*shape, dtype=DTYPES[dtype], with_bias=shape[0] != 3)
    assert_matches_reference(scan_in_input_dtype, scan_reference, args, ("u", "delta", "A", "B", "delta_bias"),
                             DTYPES[dtype], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_without_softplus(backend):
    require_backend(STATE_SCAN_BACKENDS, backend)
    u, delta, A, B, bias = make_scan_inputs(2, 9, 20, 2)
    args = [u, F.softplus(delta), A, B, bias.abs()]
    assert_matches_reference(scan_in_input_dtype, scan_reference, args, ("u", "delta", "A", "B", "delta_bias"),
                             torch.float32, backend, delta_softplus=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dtype", _cases(FUSION_SHAPES))
def test_fusion_backends_match_reference(backend, dtype, shape):
    require_backend(STATE_FUSION_BACKENDS, backend)
    args = make_fusion_inputs(*shape, dtype=DTYPES[dtype], sparse=shape[3] != 3)
    assert_matches_reference(state_fusion, state_fusion_ref, args, ("x", "weight"), DTYPES[dtype], backend)


SCAN_FUSION_NAMES = ("u", "delta", "A", "B", "C", "weight", "D", "delta_bias")
NORM_GATE_NAMES = ("norm_weight", "norm_bias", "gate")


def scan_fusion_norm_gate(*args, norm_eps=1e-5, backend="reference"):
    """state_scan_fusion with softplus, the LayerNorm (eps 1e-5) and the gate: args end with norm weight, bias, gate."""
    return state_scan_fusion(*args[:8], True, *args[8:10], norm_eps, args[10], backend=backend)


def scan_fusion_norm_gate_reference(*args, norm_eps=1e-5):
    return state_scan_fusion_ref(*args[:8], True, *args[8:10], norm_eps, args[10])


def test_scan_fusion_reference_is_scan_then_fusion_then_read_out():
    u, delta, A, B, C, weight, D, bias = make_scan_fusion_inputs(2, 4, 3, 6, 2, 5, dtype=torch.float64)
    batch, H, W, E = u.shape
    h = state_scan_naive(u.reshape(batch, H * W, E), delta.reshape(batch, H * W, E), A, B.reshape(batch, H * W, 2),
                         bias, True)
    expected = D * u
    for n in range(2):
        expected = expected + C[..., n:n + 1] * state_fusion_naive(h[:, :, n].reshape(batch, H, W, E), weight)
    torch.testing.assert_close(state_scan_fusion_ref(u, delta, A, B, C, weight, D, bias, True), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dtype", _cases(SCAN_FUSION_SHAPES))
def test_scan_fusion_backends_match_reference(backend, dtype, shape):
    """Output and every gradient (the cpu backend's forward is one fused kernel pass)."""
    require_backend(STATE_SCAN_BACKENDS, backend)
    args = make_scan_fusion_inputs(*shape, dtype=DTYPES[dtype], with_optional=shape[0] != 2 or shape[4] != 2)
    assert_matches_reference(state_scan_fusion, state_scan_fusion_ref, args, SCAN_FUSION_NAMES, DTYPES[dtype],
                             backend, delta_softplus=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dtype, affine", [(SCAN_FUSION_SHAPES[0], dtype, True) for dtype in DTYPES]
                         + [(shape, "fp32", i % 2 == 0) for i, shape in enumerate(SCAN_FUSION_SHAPES[1:])])
def test_scan_fusion_with_norm_and_gate_matches_reference(backend, shape, dtype, affine):
    """Spatial-Mamba's LayerNorm (with and without affine parameters) and SiLU gate after the read-out: output and
    every gradient."""
    require_backend(STATE_SCAN_BACKENDS, backend)
    args = make_scan_fusion_inputs(*shape, dtype=DTYPES[dtype])
    args += make_norm_and_gate(args[0], affine)
    assert_matches_reference(scan_fusion_norm_gate, scan_fusion_norm_gate_reference, args,
                             SCAN_FUSION_NAMES + NORM_GATE_NAMES, DTYPES[dtype], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_fusion_norm_alone_and_gate_alone(backend):
    require_backend(STATE_SCAN_BACKENDS, backend)
    args = make_scan_fusion_inputs(2, 3, 5, 20, 1, 11)
    weight, bias, gate = make_norm_and_gate(args[0])
    reference = state_scan_fusion_ref(*args, True, weight, None, 1e-3)
    torch.testing.assert_close(state_scan_fusion(*args, True, weight, None, 1e-3, backend=backend), reference,
                               rtol=2e-5, atol=2e-5)
    reference = state_scan_fusion_ref(*args, True, gate=gate)
    torch.testing.assert_close(state_scan_fusion(*args, True, gate=gate, backend=backend), reference, rtol=2e-5,
                               atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_fusion_without_softplus(backend):
    require_backend(STATE_SCAN_BACKENDS, backend)
    args = make_scan_fusion_inputs(1, 3, 5, 20, 1, 11)
    args[1], args[7] = F.softplus(args[1]), args[7].abs()
    assert_matches_reference(state_scan_fusion, state_scan_fusion_ref, args, SCAN_FUSION_NAMES, torch.float32,
                             backend, delta_softplus=False)


def test_cpu_scan_fusion_equals_the_two_cpu_ops():
    """The fused kernel computes what state_scan, state_fusion and the read-out compute separately."""
    require_backend(STATE_SCAN_BACKENDS, "cpu")
    u, delta, A, B, C, weight, D, bias = make_scan_fusion_inputs(2, 9, 7, 40, 1, 11)
    h = state_scan(u.view(2, 63, 40), delta.view(2, 63, 40), A, B.view(2, 63, 1), bias, True, backend="cpu")
    expected = state_fusion(h.view(2, 9, 7, 40), weight, backend="cpu") * C + D * u
    torch.testing.assert_close(state_scan_fusion(u, delta, A, B, C, weight, D, bias, True, backend="cpu"), expected,
                               rtol=1e-5, atol=1e-5)


def test_states_are_float32_for_half_inputs():
    u, delta, A, B, bias = make_scan_inputs(1, 4, 8, 1, dtype=torch.bfloat16)
    assert state_scan(u, delta, A, B, bias, True, backend="reference").dtype == torch.float32


def test_merged_kernel_equals_the_three_dilated_convolutions():
    """Spatial-Mamba's training-mode fusion (three replicate-padded dilated 3x3 convs, scaled by alpha) is one
    state_fusion with the merged 11x11 kernel."""
    g = torch.Generator().manual_seed(0)
    C = 6
    kernels = [torch.randn(C, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    alpha = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(2, C, 9, 13, generator=g, dtype=torch.float64)
    expected = sum(a * F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k, dilation=d, groups=C)
                   for a, k, d in zip(alpha, kernels, (1, 3, 5)))
    merged = merge_dilated_kernels([a * k for a, k in zip(alpha, kernels)], (1, 3, 5))
    assert merged.shape == (C, 11, 11) and int((merged != 0).any(0).sum()) == 25
    for backend in BACKENDS:
        out = state_fusion(x.permute(0, 2, 3, 1), merged, backend=backend).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_cpu_fusion_skips_only_taps_that_are_zero_everywhere():
    require_backend(STATE_FUSION_BACKENDS, "cpu")
    x, weight = make_fusion_inputs(1, 6, 7, 20, 5)
    weight[:, 0, 0] = 0
    weight[3, 0, 0] = 1.5  # one channel keeps the tap
    torch.testing.assert_close(state_fusion(x, weight, backend="cpu"), state_fusion_ref(x, weight))


@pytest.mark.parametrize("op", ["scan", "fusion", "scan_fusion"])
def test_opcheck(op):
    if op == "scan_fusion":
        inputs = make_scan_fusion_inputs(2, 3, 4, 6, 1, 5)
        args = (*inputs, *make_norm_and_gate(inputs[0]), True, 1e-5, "auto")
        target = torch.ops.vision2d.state_scan_fusion.default
    elif op == "scan":
        u, delta, A, B, bias = make_scan_inputs(2, 5, 6, 2)
        args = (u, delta, A, B, bias, True, "auto")
        target = torch.ops.vision2d.state_scan.default
    else:
        x, weight = make_fusion_inputs(2, 4, 5, 6, 3)
        args = (x, weight, "auto")
        target = torch.ops.vision2d.state_fusion.default
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(target, args)


def test_compile_fullgraph():
    u, delta, A, B, bias = make_scan_inputs(1, 12, 8, 1)
    weight = merge_dilated_kernels([torch.randn(8, 1, 3, 3) for _ in range(3)], (1, 3, 5))

    def fused(u, delta, A, B, bias, weight):
        h = state_scan(u, delta, A, B, bias, delta_softplus=True)
        return state_fusion(h.view(1, 3, 4, 8), weight)

    torch.testing.assert_close(torch.compile(fused, fullgraph=True, backend="eager")(u, delta, A, B, bias, weight),
                               fused(u, delta, A, B, bias, weight))


def test_meta_tensors_give_shapes():
    with torch.device("meta"):
        u, delta, B = torch.empty(2, 12, 8), torch.empty(2, 12, 8), torch.empty(2, 12, 1)
        h = state_scan(u, delta, torch.empty(8, 1), B, torch.empty(8), True)
        out = state_fusion(h.view(2, 3, 4, 8), torch.empty(8, 11, 11))
        y = state_scan_fusion(u.view(2, 3, 4, 8), delta.view(2, 3, 4, 8), torch.empty(8, 1), B.view(2, 3, 4, 1),
                              B.view(2, 3, 4, 1), torch.empty(8, 11, 11), torch.empty(8), torch.empty(8), True)
    assert h.shape == (2, 12, 1, 8) and out.shape == (2, 3, 4, 8) and out.device.type == "meta"
    assert y.shape == (2, 3, 4, 8) and y.device.type == "meta"


def _fusion_args(**replace):
    """Valid state_scan_fusion arguments (batch 2, 3x4 map, E = 8, N = 1, 5x5 kernel) with some replaced."""
    args = dict(zip(SCAN_FUSION_NAMES, make_scan_fusion_inputs(2, 3, 4, 8, 1, 5)))
    return list(dict(args, **replace).values())


@pytest.mark.parametrize("call, message", [
    (lambda: state_scan(torch.randn(2, 5), torch.randn(2, 5), torch.randn(5, 1), torch.randn(2, 1)), "u must be 3-D"),
    (lambda: state_scan(torch.randn(1, 4, 6), torch.randn(1, 4, 5), -torch.rand(6, 1), torch.randn(1, 4, 1)),
     "delta must have shape"),
    (lambda: state_scan(torch.randn(1, 4, 6), torch.randn(1, 4, 6), -torch.rand(5, 1), torch.randn(1, 4, 1)),
     "A must be"),
    (lambda: state_scan(torch.randn(1, 4, 6), torch.randn(1, 4, 6), -torch.rand(6, 1), torch.randn(1, 4, 2)),
     "B must have shape"),
    (lambda: state_scan(torch.randn(1, 4, 6), torch.randn(1, 4, 6).half(), -torch.rand(6, 1), torch.randn(1, 4, 1)),
     "delta has dtype"),
    (lambda: state_scan(torch.randn(1, 4, 6), torch.randn(1, 4, 6), -torch.rand(6, 1), torch.randn(1, 4, 1),
                        torch.randn(5)), "delta_bias must have shape"),
    (lambda: state_fusion(torch.randn(1, 4, 6), torch.randn(6, 3, 3)), "x must be 4-D"),
    (lambda: state_scan_fusion(*_fusion_args(u=torch.randn(2, 12, 8))), "u must be 4-D"),
    (lambda: state_scan_fusion(*_fusion_args(C=torch.randn(2, 3, 4, 2))), "C must have shape"),
    (lambda: state_scan_fusion(*_fusion_args(weight=torch.randn(8, 4, 4))), "weight must be"),
    (lambda: state_scan_fusion(*_fusion_args(D=torch.randn(7))), "D must have shape"),
    (lambda: state_scan_fusion(*_fusion_args(C=torch.randn(2, 3, 4, 1).double())), "C has dtype"),
    (lambda: state_scan_fusion(*_fusion_args(A=torch.randn(8, 1).int())), "A has dtype"),
    (lambda: state_scan_fusion(*_fusion_args(), gate=torch.randn(2, 3, 4, 7)), "gate must have shape"),
    (lambda: state_scan_fusion(*_fusion_args(), norm_weight=torch.randn(8)), "without norm_eps"),
    (lambda: state_fusion(torch.randn(1, 4, 4, 6), torch.randn(6, 4, 4)), "k odd"),
    (lambda: state_fusion(torch.randn(1, 4, 4, 6), torch.randn(5, 3, 3)), "C = 6"),
    (lambda: state_fusion(torch.randn(1, 4, 4, 6).int(), torch.randn(6, 3, 3)), "x has dtype"),
    (lambda: state_fusion(torch.randn(1, 4, 4, 6), torch.randn(6, 3, 3), backend="cuda"), "unknown scan backend"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()
