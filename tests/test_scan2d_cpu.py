"""The "cpu" scan backend beyond the shared backend rows: several channel blocks, images split across threads,
the checkpointed backward and thread counts (building and loading is tested for every kernel in test_native.py)."""
import pytest
import torch

from vision2d.ops import scan2d_cpu
from vision2d.ops.scan2d_ref import selective_scan_2d_ref, selective_scan_2d_ref_backward
from op_harness import TOLERANCES
from scan2d_cases import make_scan_inputs

pytestmark = pytest.mark.skipif(scan2d_cpu.unavailable_reason(torch.device("cpu")) is not None,
                                reason=f"cpu backend unavailable: {scan2d_cpu.unavailable_reason(torch.device('cpu'))}")


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _check_against_reference(shape, dtype=torch.float32, reverse=False, with_d=True, delta_softplus=True,
                             delta_scale=1.0):
    args = list(make_scan_inputs(*shape, dtype=dtype, with_d=with_d, delta_scale=delta_scale))
    if not delta_softplus:  # raw deltas must be positive step sizes
        args[1], args[2] = (torch.nn.functional.softplus(a.double()).to(dtype) for a in args[1:3])
    ref_args = [a.double() if a is not None else None for a in args]
    atol, rtol = TOLERANCES[dtype]
    y_ref = selective_scan_2d_ref(*ref_args, delta_softplus=delta_softplus, reverse=reverse)
    y = scan2d_cpu.forward(*args, delta_softplus, reverse)
    torch.testing.assert_close(y.double(), y_ref, atol=atol * y_ref.abs().max().item(), rtol=rtol)
    dy = torch.randn_like(y_ref)
    grads = scan2d_cpu.backward(dy.to(dtype), *args, delta_softplus, reverse)
    ref_grads = selective_scan_2d_ref_backward(dy, *ref_args, delta_softplus=delta_softplus, reverse=reverse)
    for name, g, r in zip(("u", "delta_t", "delta_l", "A_t", "A_l", "B_t", "B_l", "C", "D"), grads, ref_grads):
        if r is None:
            assert g is None
            continue
        torch.testing.assert_close(g.double(), r.double(), atol=atol * r.abs().max().item(), rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")
    return y, grads


@pytest.mark.parametrize("num_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(1, 6, 7, 40, 16), (3, 4, 5, 20, 4)])
def test_channel_blocks_and_images_split_across_threads(threads, num_threads, shape):
    # E = 40 and 20 leave a partial block; with several threads one image's blocks land on different threads
    threads(num_threads)
    _check_against_reference(shape, reverse=num_threads % 2 == 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_checkpointed_backward(monkeypatch, dtype, reverse):
    # no budget: segments of ceil(sqrt(H)) rows restarted from checkpointed rows
    monkeypatch.setattr(scan2d_cpu, "STATE_BUDGET_BYTES", 0)
    _check_against_reference((2, 11, 6, 20, 16), dtype=dtype, reverse=reverse)


def test_without_softplus_and_without_d():
    _check_against_reference((2, 5, 6, 18, 16), delta_softplus=False, with_d=False)


def test_large_deltas_saturate_softplus():
    _check_against_reference((1, 5, 9, 17, 16), delta_scale=30.0)


def test_results_do_not_depend_on_timing(threads):
    threads(2)
    args = make_scan_inputs(3, 5, 6, 20, 16)
    dy = torch.randn(3, 5, 6, 20)
    first = scan2d_cpu.backward(dy, *args, True, False)
    for _ in range(3):
        again = scan2d_cpu.backward(dy, *args, True, False)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_empty_inputs():
    args = make_scan_inputs(0, 3, 4, 5, 4)
    assert scan2d_cpu.forward(*args, True, False).shape == (0, 3, 4, 5)
    grads = scan2d_cpu.backward(torch.zeros(0, 3, 4, 5), *args, True, False)
    assert grads[3].shape == (5, 4) and not grads[3].any() and not grads[8].any()


def test_other_devices_are_refused():
    assert "CPU tensors only" in scan2d_cpu.unavailable_reason(torch.device("meta"))
