"""The Triton scan kernels vs the float64 reference, on CPU tensors under the Triton interpreter: an ordinary run
re-runs this file in TRITON_INTERPRET=1 subprocess shards (`op_harness.run_file_under_triton_interpreter`), where the
kernel cases below run in-process."""
import itertools

import pytest
import torch

from vision2d.ops import backend_unavailable_reason, selective_scan_2d
from vision2d.ops.scan2d_ref import selective_scan_2d_ref, selective_scan_2d_ref_backward
from vision2d.ops.selective_scan_2d import SCAN2D_BACKENDS
from op_harness import (DTYPES, TOLERANCES, run_file_under_triton_interpreter, shard, triton_cpu_reason,
                        triton_importable)
from scan2d_cases import SHAPES, make_scan_inputs
from test_scan2d import GRAD_NAMES, _assert_backend_matches_reference

CPU_REASON = triton_cpu_reason(SCAN2D_BACKENDS)
TRITON_IMPORTABLE = triton_importable(SCAN2D_BACKENDS)
needs_interpreter = pytest.mark.skipif(
    CPU_REASON is not None,
    reason=f"runs in the TRITON_INTERPRET=1 subprocess of test_kernels_under_triton_interpreter ({CPU_REASON})")


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason=f"triton unavailable: {CPU_REASON}")
@pytest.mark.skipif(CPU_REASON is None, reason="the kernels already run in this process")
def test_kernels_under_triton_interpreter():
    run_file_under_triton_interpreter(__file__)


@pytest.mark.skipif(not TRITON_IMPORTABLE or CPU_REASON is None, reason="needs triton, not its interpreter")
@pytest.mark.parametrize("reverse", [False, True], ids=["tl", "br"])
def test_kernels_compile_for_sm90(reverse):
    """Both kernels lower to a cubin for an H100 (no GPU needed): the interpreter alone accepts invalid Triton."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vision2d.ops import scan2d_triton

    H, W, E, N = 28, 28, 128, 16  # a Mamba2D-T stage-1 scan, bf16 inputs
    fp32_pointers = {"At_ptr", "Al_ptr", "d_ptr", "dAt_ptr", "dAl_ptr", "dbt_ptr", "dbl_ptr", "dc_ptr", "dd_ptr",
                     "scratch_ptr"}
    for kernel, tile in ((scan2d_triton._scan2d_fwd_kernel, scan2d_triton.FORWARD_TILE),
                         (scan2d_triton._scan2d_bwd_kernel, scan2d_triton.BACKWARD_TILE)):
        block_w, block_e, block_n = scan2d_triton._block_sizes(W, E, N, tile)
        constexprs = dict(HAS_D=True, DELTA_SOFTPLUS=True, REVERSE=reverse, STATE=tl.float32, BLOCK_W=block_w,
                          BLOCK_E=block_e, BLOCK_N=block_n)
        signature = {name: "constexpr" if name in constexprs else ("i32" if not name.endswith("_ptr") else
                                                                     "*fp32" if name in fp32_pointers else "*bf16")
                     for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=scan2d_triton._num_warps(block_w * block_e * block_n)))
        assert compiled.asm["cubin"], kernel.__name__


@pytest.mark.skipif(not TRITON_IMPORTABLE, reason=f"triton unavailable: {CPU_REASON}")
def test_backward_scratch_is_a_fraction_of_the_state():
    from vision2d.ops.scan2d_triton import backward_scratch_numel
    for (B, H, W, E, N), fraction in (((64, 56, 56, 64, 16), 0.26), ((64, 28, 28, 128, 16), 0.36)):
        assert backward_scratch_numel(B, H, W, E, N) <= fraction * B * H * W * E * N


def test_unavailable_reason_names_the_requirement():
    reason = backend_unavailable_reason("triton", torch.device("meta"))
    assert reason is not None
    if TRITON_IMPORTABLE and CPU_REASON is not None:
        assert "TRITON_INTERPRET=1" in CPU_REASON


@needs_interpreter
@pytest.mark.parametrize("shape, dtype, reverse", shard([
    pytest.param(shape, dtype, reverse, id=f"{'br' if reverse else 'tl'}-{shape}-{name}")
    for shape, reverse, (name, dtype) in itertools.product(SHAPES, [False, True], DTYPES.items())]))
def test_matches_reference(shape, dtype, reverse):
    _assert_backend_matches_reference("triton", shape, dtype, reverse)


@needs_interpreter
@pytest.mark.parametrize("dtype, reverse", shard([
    pytest.param(dtype, reverse, id=f"{'br' if reverse else 'tl'}-{name}")
    for reverse, (name, dtype) in itertools.product([False, True], [("fp32", torch.float32), ("bf16", torch.bfloat16)])
]))
def test_without_d(dtype, reverse):
    _assert_backend_matches_reference("triton", (2, 4, 3, 3, 4), dtype, reverse, with_d=False)


@needs_interpreter
@pytest.mark.parametrize("dtype", shard([pytest.param(torch.bfloat16, id="bf16"),
                                          pytest.param(torch.float16, id="fp16")]))
def test_half_inputs_with_large_deltas_and_long_rows(dtype):
    """softplus(delta) up to ~30 and a 33-pixel row: finite everywhere and still close to the reference."""
    _assert_backend_matches_reference("triton", (1, 3, 33, 2, 16), dtype, False, delta_scale=8.0)


@needs_interpreter
@pytest.mark.parametrize("reverse", shard([pytest.param(False, id="tl"), pytest.param(True, id="br")]))
def test_raw_deltas_without_softplus(reverse):
    args = list(make_scan_inputs(2, 3, 4, 3, 4))
    args[1], args[2] = torch.nn.functional.softplus(args[1]), torch.nn.functional.softplus(args[2])
    y = selective_scan_2d(*args, delta_softplus=False, reverse=reverse, backend="triton")
    ref_args = [a.double() for a in args]
    y_ref = selective_scan_2d_ref(*ref_args, delta_softplus=False, reverse=reverse)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(y.double(), y_ref, atol=atol * y_ref.abs().max().item(), rtol=rtol)
    dy = torch.randn_like(y_ref)
    from vision2d.ops import scan2d_triton
    grads = scan2d_triton.backward(dy.float(), *args, False, reverse)
    ref_grads = selective_scan_2d_ref_backward(dy, *ref_args, delta_softplus=False, reverse=reverse)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=atol * r.abs().max().item(), rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")


@needs_interpreter
@pytest.mark.parametrize("with_d, reverse", shard([pytest.param(True, True, id="d-br"),
                                                    pytest.param(False, False, id="nod-tl")]))
def test_opcheck(with_d, reverse):
    args = [a.requires_grad_() if a is not None else None for a in make_scan_inputs(2, 3, 4, 3, 4, with_d=with_d)]
    torch.library.opcheck(torch.ops.vision2d.selective_scan_2d.default, (*args, True, reverse, "triton"))


@needs_interpreter
@pytest.mark.parametrize("shape", shard([pytest.param((0, 3, 4, 2, 4), id="B0"),
                                          pytest.param((1, 3, 4, 2, 0), id="N0"),
                                          pytest.param((1, 2, 3, 0, 2), id="E0")]))
def test_empty_dimensions(shape):
    args = [a.requires_grad_() for a in make_scan_inputs(*shape)]
    y = selective_scan_2d(*args, backend="triton")
    y_ref = selective_scan_2d_ref(*args)
    torch.testing.assert_close(y, y_ref)
    for g, r in zip(torch.autograd.grad(y.sum(), args), torch.autograd.grad(y_ref.sum(), args)):
        torch.testing.assert_close(g, r)
