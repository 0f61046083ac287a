"""The Triton selective-scan kernels vs the float64 reference, on CPU tensors under the Triton interpreter: an
ordinary run re-runs this file in TRITON_INTERPRET=1 subprocess shards (`op_harness.run_file_under_triton_interpreter`),
where the kernel cases below run in-process."""
import itertools

import pytest
import torch

from vision2d.ops import cross_scan_orders, selective_scan
from vision2d.ops.selective_scan import SELECTIVE_SCAN_BACKENDS
from op_harness import DTYPES, run_file_under_triton_interpreter, shard, triton_cpu_reason, triton_importable
from selective_scan_cases import make_inputs, random_orders
from test_selective_scan import (assert_backend_matches_reference,
                                 assert_backend_with_delta_projection_matches_reference,
                                 assert_periodic_inputs_match_written_out_copies)

CPU_REASON = triton_cpu_reason(SELECTIVE_SCAN_BACKENDS)
TRITON_IMPORTABLE = triton_importable(SELECTIVE_SCAN_BACKENDS)
needs_interpreter = pytest.mark.skipif(
    CPU_REASON is not None,
    reason=f"runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_triton_interpreter ({CPU_REASON})")
# (batch, L, K, E, N), tiny for the interpreter: odd L, L = 1, N in {1, 4, 16}, K in {1, 2, 4}, odd E
SHAPES = [(2, 7, 4, 5, 1), (1, 1, 2, 3, 4), (2, 5, 1, 6, 16), (1, 6, 2, 1, 4)]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 4 steps, so that short sequences span several chunks (carries forward and backward)."""
    from vision2d.ops import selective_scan_triton
    monkeypatch.setattr(selective_scan_triton, "TILE", 4)


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason=f"triton unavailable: {CPU_REASON}")
@pytest.mark.skipif(CPU_REASON is None, reason="the kernels already run in this process")
def test_kernels_under_triton_interpreter():
    run_file_under_triton_interpreter(__file__)


@pytest.mark.skipif(not TRITON_IMPORTABLE or CPU_REASON is None, reason="needs triton, not its interpreter")
@pytest.mark.parametrize("merge", [True, False])
def test_kernels_compile_for_sm90(merge):
    """Both kernels lower to a cubin for an H100 (no GPU needed): the interpreter alone accepts invalid Triton."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vision2d.ops import scan2d_triton, selective_scan_triton

    L, E, N = 3136, 96, 1  # a VMamba-T stage-1 scan, bf16 inputs, fp32 parameters
    fp32_pointers = {"A_ptr", "d_ptr", "bias_ptr", "y_ptr", "du_ptr", "dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr",
                     "dbias_ptr", "scratch_ptr"}
    block_l, block_e, block_n = selective_scan_triton._block_sizes(L, E, N)
    constexprs = dict(HAS_D=True, HAS_BIAS=True, DELTA_SOFTPLUS=True, MERGE=merge, STATE=tl.float32,
                      BLOCK_L=block_l, BLOCK_E=block_e, BLOCK_N=block_n)
    for kernel in (selective_scan_triton._selective_scan_fwd_kernel, selective_scan_triton._selective_scan_bwd_kernel):
        signature = {name: "constexpr" if name in constexprs else "i32" if not name.endswith("_ptr") else
                     "*i64" if name == "order_ptr" else "*fp32" if name in fp32_pointers else "*bf16"
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=scan2d_triton._num_warps(block_l * block_e * block_n)))
        assert compiled.asm["cubin"], kernel.__name__


@needs_interpreter
@pytest.mark.parametrize("shape, dtype, merge", shard(
    [pytest.param(shape, torch.float32, merge, id=f"{'merge' if merge else 'split'}-{shape}-fp32")
     for shape, merge in itertools.product(SHAPES, [True, False])]
    + [pytest.param(shape, dtype, merge, id=f"{'merge' if merge else 'split'}-{shape}-{name}")
       for (shape, merge), (name, dtype) in itertools.product([(SHAPES[0], True), (SHAPES[2], False)],
                                                              list(DTYPES.items())[1:])]))
def test_matches_reference(shape, dtype, merge):
    assert_backend_matches_reference("triton", shape, dtype, merge=merge)


@needs_interpreter
@pytest.mark.parametrize("merge, dtype", shard([pytest.param(True, torch.float64, id="merge-fp64"),
                                                pytest.param(False, torch.float32, id="split-fp32")]))
def test_several_chunks(small_tiles, merge, dtype):
    assert_backend_matches_reference("triton", (1, 11, 2, 3, 2), dtype, merge=merge)


@needs_interpreter
@pytest.mark.parametrize("options", shard([
    pytest.param(dict(ordered=False), id="identity"),
    pytest.param(dict(with_d=False, with_bias=False), id="no-d-no-bias"),
    pytest.param(dict(delta_softplus=False, with_bias=False), id="raw-deltas"),
    pytest.param(dict(delta_scale=8.0, dtype=torch.bfloat16), id="large-deltas-bf16")]))
def test_options(options):
    dtype = options.pop("dtype", torch.float32)
    assert_backend_matches_reference("triton", (1, 5, 2, 3, 2), dtype, **options)


@needs_interpreter
@pytest.mark.parametrize("merge", shard([pytest.param(True, id="merge"), pytest.param(False, id="split")]))
def test_delta_projection(merge):
    assert_backend_with_delta_projection_matches_reference("triton", (2, 5, 4, 3, 2, 2), torch.float32, merge=merge)


@needs_interpreter
@pytest.mark.parametrize("merge", shard([pytest.param(True, id="merged")]))
def test_periodic_inputs(merge):
    assert_periodic_inputs_match_written_out_copies("triton", merge, low_rank=True, copies=2)


@needs_interpreter
@pytest.mark.parametrize("merge", shard([pytest.param(False, id="split")]))
def test_opcheck(merge):
    args = [a.requires_grad_() for a in make_inputs(1, 3, 2, 3, 1)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan.default,
                          (*args, random_orders(2, 3), True, merge, "triton"))


@needs_interpreter
@pytest.mark.parametrize("shape", shard([pytest.param((0, 3, 4, 2, 1), id="batch0"),
                                          pytest.param((2, 0, 4, 3, 1), id="L0"),
                                          pytest.param((1, 3, 2, 0, 2), id="E0"),
                                          pytest.param((1, 3, 0, 2, 2), id="K0"),
                                          pytest.param((1, 3, 2, 2, 0), id="N0")]))
def test_empty_dimensions(shape):
    args = [a.requires_grad_() for a in make_inputs(*shape)]
    y = selective_scan(*args, delta_softplus=True, backend="triton")
    y_ref = selective_scan(*args, delta_softplus=True, backend="reference")
    torch.testing.assert_close(y, y_ref)
    for g, r in zip(torch.autograd.grad(y.sum(), args), torch.autograd.grad(y_ref.sum(), args)):
        torch.testing.assert_close(g, r)


@needs_interpreter
def test_bad_orders_raise():
    args = make_inputs(1, 6, 4, 3, 1)
    order = cross_scan_orders(2, 3).clone()
    order[2, 0] = order[2, 1]
    with pytest.raises(ValueError, match="permutation"):
        selective_scan(*args, order=order, backend="triton")
