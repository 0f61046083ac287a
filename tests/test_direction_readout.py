"""`direction_readout` (LocalMamba's gated sum over directions with its LayerNorm and SiLU gate): every backend against
the float64 reference (forward and every gradient) over shapes and dtypes, a padded scan output read in place, the
custom-op contract and bad input."""
import pytest
import torch

from vision2d.ops import direction_readout
from vision2d.ops import direction_readout_ref as ref
from vision2d.ops.direction_readout import DIRECTION_READOUT_BACKENDS
from op_harness import DTYPES, assert_matches_reference, require_backend

BACKENDS = ["reference", "cpu"]
SHAPES = [(2, 9, 4, 20), (1, 37, 3, 48), (3, 5, 1, 16), (1, 70, 4, 96)]  # (batch, L, K, E)


def make_inputs(batch, L, K, E, dtype=torch.float32, affine=True, seed=0):
    """y with channel means far from zero (the statistics are two-pass), gates in (0, 1), z, LayerNorm affine."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, L, K, E, generator=g) * 2 + 3 * torch.randn(batch, L, K, 1, generator=g)
    gate, z = torch.rand(batch, K, E, generator=g), torch.randn(batch, L, E, generator=g)
    weight, bias = (torch.randn(E, generator=g) for _ in range(2))
    return [t.to(dtype) for t in (y, gate, z)] + ([weight.to(dtype), bias.to(dtype)] if affine else [None, None])


def readout(y, gate, z, norm_weight, norm_bias, backend=None):
    return direction_readout(y, gate, z, norm_weight, norm_bias, 1e-5, backend=backend)


def readout_ref(y, gate, z, norm_weight, norm_bias):
    return ref.readout(y, gate, z, norm_weight, norm_bias, 1e-5)


def _cases():
    """Every dtype on the first shape, fp32 on the others; one case without the LayerNorm affine."""
    return ([(SHAPES[0], dtype, True) for dtype in DTYPES] + [(shape, "fp32", True) for shape in SHAPES[1:]]
            + [(SHAPES[1], "fp32", False)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, dtype, affine", _cases())
def test_backends_match_reference(backend, shape, dtype, affine):
    require_backend(DIRECTION_READOUT_BACKENDS, backend)
    y, gate, z, weight, bias = make_inputs(*shape, dtype=DTYPES[dtype], affine=affine)
    assert_matches_reference(readout, readout_ref, [y, gate, z, weight, bias],
                             ("y", "gate", "z", "norm_weight", "norm_bias"), DTYPES[dtype], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_scan_output_is_read_in_place(backend):
    """The first L pixels of a longer scan output (LocalMamba's window padding) as a view."""
    require_backend(DIRECTION_READOUT_BACKENDS, backend)
    y, gate, _, weight, bias = make_inputs(3, 12, 4, 32)
    z = torch.randn(3, 9, 32)
    view = y[:, :9]
    torch.testing.assert_close(readout(view, gate, z, weight, bias, backend),
                               readout_ref(view.contiguous(), gate, z, weight, bias), atol=2e-5, rtol=1e-5)


def test_cpu_kernel_uses_threads_and_matches_one_thread():
    require_backend(DIRECTION_READOUT_BACKENDS, "cpu")
    y, gate, z, weight, bias = make_inputs(1, 600, 4, 64)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(readout(y, gate, z, weight, bias, "cpu"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_opcheck_and_meta_shapes():
    y, gate, z, weight, bias = (t.requires_grad_() for t in make_inputs(2, 5, 3, 16))
    torch.library.opcheck(torch.ops.vision2d.direction_readout.default, (y, gate, z, weight, bias, 1e-5, "auto"))
    with torch.device("meta"):
        y = torch.empty(2, 7, 4, 16)
        assert direction_readout(y, torch.empty(2, 4, 16), torch.empty(2, 7, 16)).shape == (2, 7, 16)


@pytest.mark.parametrize("call, message", [
    (lambda: direction_readout(torch.randn(2, 5, 16), torch.rand(2, 1, 16), torch.randn(2, 5, 16)),
     "y must be a 4-D tensor"),
    (lambda: direction_readout(torch.randn(1, 5, 2, 16), torch.rand(1, 2, 16), torch.randn(1, 5, 16), torch.randn(15)),
     "norm_weight must have shape"),
    (lambda: direction_readout(torch.randn(1, 5, 2, 16), torch.rand(1, 3, 16), torch.randn(1, 5, 16)),
     "gate must have shape"),
    (lambda: direction_readout(torch.randn(1, 5, 2, 16), torch.rand(1, 2, 16), torch.randn(1, 4, 16)),
     "z must have shape"),
    (lambda: direction_readout(torch.randn(1, 5, 2, 16), torch.rand(1, 2, 16).int(), torch.randn(1, 5, 16)),
     "gate must be a float tensor"),
    (lambda: direction_readout(torch.randn(1, 5, 2, 16), torch.rand(1, 2, 16), torch.randn(1, 5, 16), backend="triton"),
     "unknown scan backend"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
