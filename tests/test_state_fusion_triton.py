"""The Triton kernels of `state_scan` and `state_fusion` (and `state_scan_fusion`, which composes them) vs the float64
reference, on CPU tensors under the Triton
interpreter: an ordinary run re-runs this file in TRITON_INTERPRET=1 subprocess shards
(`op_harness.run_file_under_triton_interpreter`), where the kernel cases below run in-process."""
import pytest
import torch

from vision2d.ops import state_fusion, state_scan_fusion
from vision2d.ops.state_fusion import STATE_FUSION_BACKENDS
from vision2d.ops.state_fusion_ref import state_fusion_ref
from vision2d.ops.state_scan import STATE_SCAN_BACKENDS
from vision2d.ops.state_scan_fusion import state_scan_fusion_ref
from op_harness import (DTYPES, assert_matches_reference, run_file_under_triton_interpreter, shard, triton_cpu_reason,
                        triton_importable)
from state_fusion_cases import (SCAN_SHAPES, make_fusion_inputs, make_norm_and_gate, make_scan_fusion_inputs,
                                make_scan_inputs)
from test_state_fusion import (NORM_GATE_NAMES, SCAN_FUSION_NAMES, scan_fusion_norm_gate,
                               scan_fusion_norm_gate_reference, scan_in_input_dtype, scan_reference)

CPU_REASON = triton_cpu_reason(STATE_SCAN_BACKENDS)
TRITON_IMPORTABLE = triton_importable(STATE_SCAN_BACKENDS)
needs_interpreter = pytest.mark.skipif(
    CPU_REASON is not None,
    reason=f"runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_triton_interpreter ({CPU_REASON})")
# every dtype on the smallest shape, fp32 on the odd ones (the interpreter runs each program in Python)
SCAN_CASES = shard([(SCAN_SHAPES[0], dtype) for dtype in DTYPES] + [(shape, "fp32") for shape in SCAN_SHAPES[1:]])
FUSION_CASES = shard([((1, 3, 4, 5, 3), dtype) for dtype in DTYPES]
                     + [(shape, "fp32") for shape in [(1, 1, 1, 20, 3), (2, 5, 1, 16, 3), (1, 2, 6, 3, 11)]])


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason=f"triton unavailable: {CPU_REASON}")
@pytest.mark.skipif(CPU_REASON is None, reason="the kernels already run in this process")
def test_kernels_under_triton_interpreter():
    run_file_under_triton_interpreter(__file__)


@needs_interpreter
@pytest.mark.parametrize("shape, dtype", SCAN_CASES)
def test_scan_kernels_match_reference(shape, dtype):
    args = make_scan_inputs(*shape, dtype=DTYPES[dtype], with_bias=shape[0] != 3)
    assert_matches_reference(scan_in_input_dtype, scan_reference, args, ("u", "delta", "A", "B", "delta_bias"),
                             DTYPES[dtype], "triton")


@needs_interpreter
@pytest.mark.parametrize("shape, dtype", FUSION_CASES)
def test_fusion_kernels_match_reference(shape, dtype):
    args = make_fusion_inputs(*shape, dtype=DTYPES[dtype])
    assert_matches_reference(state_fusion, state_fusion_ref, args, ("x", "weight"), DTYPES[dtype], "triton")

SCAN_FUSION_CASES = shard([((1, 2, 3, 5, 1, 5), "fp32"), ((1, 2, 3, 5, 1, 5), "bf16"), ((2, 1, 4, 3, 2, 3), "fp32")])


@needs_interpreter
@pytest.mark.parametrize("shape, dtype", SCAN_FUSION_CASES)
def test_scan_fusion_matches_reference(shape, dtype):
    args = make_scan_fusion_inputs(*shape, dtype=DTYPES[dtype], with_optional=shape[0] == 1)
    if shape[0] == 1:  # with Spatial-Mamba's LayerNorm and gate
        args += make_norm_and_gate(args[0])
        assert_matches_reference(scan_fusion_norm_gate, scan_fusion_norm_gate_reference, args,
                                 SCAN_FUSION_NAMES + NORM_GATE_NAMES, DTYPES[dtype], "triton")
    else:
        assert_matches_reference(state_scan_fusion, state_scan_fusion_ref, args, SCAN_FUSION_NAMES, DTYPES[dtype],
                                 "triton", delta_softplus=True)


@needs_interpreter
def test_scan_without_softplus():
    import torch.nn.functional as F
    u, delta, A, B, bias = make_scan_inputs(2, 9, 20, 2)
    assert_matches_reference(scan_in_input_dtype, scan_reference, [u, F.softplus(delta), A, B, bias.abs()],
                             ("u", "delta", "A", "B", "delta_bias"), torch.float32, "triton", delta_softplus=False)


@pytest.mark.skipif(not TRITON_IMPORTABLE or CPU_REASON is None, reason="needs triton, not its interpreter")
def test_kernels_compile_for_sm90():
    """Every kernel lowers to a cubin for an H100 (no GPU needed): the interpreter alone accepts invalid Triton."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vision2d.ops import state_fusion_triton, state_scan_triton

    scan = dict(HAS_BIAS=True, DELTA_SOFTPLUS=True, STATE=tl.float32, BLOCK_E=64, BLOCK_N=1)
    fusion = dict(K=3, STATE=tl.float32, BLOCK_W=16, BLOCK_C=64)  # K = 11 unrolls the same code 121 times
    fp32 = {"a_ptr", "bias_ptr", "h_ptr", "dh_ptr", "du_ptr", "ddelta_ptr", "da_ptr", "db_ptr", "dbias_ptr", "x_ptr",
            "w_ptr", "out_ptr", "dx_ptr", "dw_ptr", "dout_ptr"}
    for kernel, constexprs in ((state_scan_triton._state_scan_fwd_kernel, scan),
                               (state_scan_triton._state_scan_bwd_kernel, scan),
                               (state_fusion_triton._state_fusion_fwd_kernel, fusion),
                               (state_fusion_triton._state_fusion_bwd_kernel, fusion)):
        signature = {name: "constexpr" if name in constexprs else ("i32" if not name.endswith("_ptr") else
                                                                     "*fp32" if name in fp32 else "*bf16")
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], kernel.__name__
