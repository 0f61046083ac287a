"""The tree scan's Triton kernels against the float64 reference and the official op, on CPU tensors under the Triton
interpreter (tests/op_harness.py): an ordinary run re-runs this file in subprocess shards with TRITON_INTERPRET=1."""
import pytest
import torch

from op_harness import (require_backend, run_file_under_triton_interpreter, shard, triton_cpu_reason,
                        triton_importable)
from test_tree_scan import SHAPES, assert_backend_matches_reference, assert_backend_matches_the_official_op, \
    assert_selective_matches_reference, load_official_cases
from test_tree_scan import test_readout_matches_reference as check_readout_matches_reference
from vision2d.ops.tree_scan import TREE_SCAN

CPU_REASON = triton_cpu_reason(TREE_SCAN)
needs_interpreter = pytest.mark.skipif(
    CPU_REASON is not None,
    reason=f"runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_triton_interpreter ({CPU_REASON})")
# bf16 is a cast to fp32 around the kernels (tested on the cpu backend); the interpreter is slow: small shapes
CASES = shard([pytest.param(dtype, shape, id=f"{name}-{'x'.join(map(str, shape))}")
               for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64)) for shape in SHAPES[1:4]])


@pytest.mark.skipif(not triton_importable(TREE_SCAN), reason=f"triton unavailable: {CPU_REASON}")
@pytest.mark.skipif(CPU_REASON is None, reason="the kernels already run in this process")
def test_kernels_under_triton_interpreter():
    run_file_under_triton_interpreter(__file__)


@needs_interpreter
@pytest.mark.parametrize("dtype, shape", CASES)
def test_triton_matches_reference(dtype, shape):
    require_backend(TREE_SCAN, "triton")
    assert_backend_matches_reference("triton", dtype, shape)


@needs_interpreter
@pytest.mark.parametrize("dtype", shard([pytest.param(torch.float32, id="fp32"),
                                         pytest.param(torch.float64, id="fp64")]))
def test_triton_selective_matches_reference(dtype):
    require_backend(TREE_SCAN, "triton")
    assert_selective_matches_reference("triton", dtype, SHAPES[3])


@needs_interpreter
@pytest.mark.parametrize("shape", shard([(2, 7, 5)]))
def test_triton_readout_matches_reference(shape):
    check_readout_matches_reference("triton", torch.float32, shape)


@needs_interpreter
@pytest.mark.parametrize("index", shard(range(len(load_official_cases()))))
def test_triton_matches_the_official_op(index):
    assert_backend_matches_the_official_op(load_official_cases()[index], "triton")


@pytest.mark.skipif(not triton_importable(TREE_SCAN) or CPU_REASON is None, reason="needs triton, not its interpreter")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_kernels_compile_for_sm90(dtype):
    """Both kernels lower to a cubin for an H100 (no GPU needed): the interpreter alone accepts invalid Triton."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vision2d.ops import tree_scan_triton

    for kernel in (tree_scan_triton._tree_scan_fwd_kernel, tree_scan_triton._tree_scan_bwd_kernel):
        constexprs = dict(BLOCK_D=tree_scan_triton.MAX_BLOCK_D)
        signature = {name: "constexpr" if name in constexprs else "i32" if not name.endswith("_ptr") else
                     "*i64" if name in ("order_ptr", "parent_ptr") else f"*{dtype}" for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=1, num_stages=1))
        assert compiled.asm["cubin"], kernel.__name__
