"""The Triton two-pass 2D scan kernels vs the float64 reference, on CPU tensors under the Triton interpreter: an
ordinary run re-runs this file in TRITON_INTERPRET=1 subprocess shards (`op_harness.run_file_under_triton_interpreter`),
where the kernel cases below run in-process."""
import pytest
import torch

from vision2d.ops import selective_scan_2pass
from vision2d.ops.selective_scan_2pass import SCAN_2PASS_BACKENDS
from op_harness import DTYPES, run_file_under_triton_interpreter, shard, triton_cpu_reason, triton_importable
from test_selective_scan_2pass import assert_backend_matches_reference, inputs

CPU_REASON = triton_cpu_reason(SCAN_2PASS_BACKENDS)
TRITON_IMPORTABLE = triton_importable(SCAN_2PASS_BACKENDS)
needs_interpreter = pytest.mark.skipif(
    CPU_REASON is not None,
    reason=f"runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_triton_interpreter ({CPU_REASON})")
# (batch, H, W, E, N), tiny for the interpreter: 1-pixel rows and columns, non-square, N in {1, 4}, odd E
SHAPES = [(2, 3, 4, 5, 1), (1, 1, 5, 3, 4), (1, 4, 1, 2, 1)]


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason=f"triton unavailable: {CPU_REASON}")
@pytest.mark.skipif(CPU_REASON is None, reason="the kernels already run in this process")
def test_kernels_under_triton_interpreter():
    run_file_under_triton_interpreter(__file__)


@pytest.mark.skipif(not TRITON_IMPORTABLE or CPU_REASON is None, reason="needs triton, not its interpreter")
def test_kernels_compile_for_sm90():
    """Both kernels lower to a cubin for an H100 (no GPU needed): the interpreter alone accepts invalid Triton."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vision2d.ops import selective_scan_2pass_triton as kernels

    W, E, N = 56, 96, 1  # a 2DVMamba-T stage-1 row, bf16 inputs, fp32 parameters
    fp32_pointers = {"A_ptr", "d_ptr", "bias_ptr", "y_ptr", "du_ptr", "dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr",
                     "dbias_ptr", "scratch_ptr"}
    options = kernels._launch_options(torch.empty(0, dtype=torch.bfloat16), W, E, N)
    num_warps = options.pop("num_warps")
    constexprs = dict(HAS_D=True, HAS_BIAS=True, DELTA_SOFTPLUS=True, MERGE=True, **options)
    for kernel in (kernels._scan_2pass_fwd_kernel, kernels._scan_2pass_bwd_kernel):
        signature = {name: "constexpr" if name in constexprs else "i32" if not name.endswith("_ptr") else
                     "*fp32" if name in fp32_pointers else "*bf16" for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=num_warps))
        assert compiled.asm["cubin"], kernel.__name__


@needs_interpreter
@pytest.mark.parametrize("shape, dtype, merge", shard(
    [pytest.param(shape, torch.float32, i % 2 == 0, id=f"{shape}-fp32") for i, shape in enumerate(SHAPES)]
    + [pytest.param(SHAPES[i % 2], dtype, i % 2 == 1, id=f"{SHAPES[i % 2]}-{name}")
       for i, (name, dtype) in enumerate(list(DTYPES.items())[1:])]))
def test_matches_reference(shape, dtype, merge):
    assert_backend_matches_reference("triton", shape, dtype, merge=merge)


@needs_interpreter
@pytest.mark.parametrize("options", shard([
    pytest.param(dict(with_d=False, with_bias=False), id="no-d-no-bias"),
    pytest.param(dict(delta_softplus=False, with_bias=False, merge=False, delta_scale=4.0), id="raw-large-deltas")]))
def test_options(options):
    assert_backend_matches_reference("triton", (1, 2, 3, 3, 2), torch.float32, **options)


@needs_interpreter
@pytest.mark.parametrize("merge", shard([pytest.param(False, id="split")]))
def test_opcheck(merge):
    args = [a.requires_grad_() for a in inputs(1, 2, 2, 3, 1)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan_2pass.default, (*args, True, 2, 2, merge, "triton"))


@needs_interpreter
@pytest.mark.parametrize("shape", shard([pytest.param((0, 2, 2), id="batch0"), pytest.param((1, 0, 3), id="H0")]))
def test_empty(shape):
    args = [a.requires_grad_() for a in inputs(*shape, 3, 1)]
    kwargs = dict(delta_softplus=True, height=shape[1], width=shape[2])
    y = selective_scan_2pass(*args, **kwargs, backend="triton")
    assert y.shape == (shape[0], 0 if 0 in shape[1:] else shape[1] * shape[2], 3)
    grads = torch.autograd.grad(y.sum(), args, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


@needs_interpreter
def test_too_wide_rows_are_refused():
    args = inputs(1, 1, 20000, 1, 1)
    with pytest.raises(ValueError, match="width 20000 with N = 1 needs 32768"):
        selective_scan_2pass(*args, height=1, width=20000, backend="triton")
