"""The "cpu" selective-scan backend beyond the shared backend rows: channel blocks and groups split across threads,
the checkpointed backward, determinism, and the devices it refuses."""
import pytest
import torch

from vision2d.ops import cross_scan_orders, selective_scan_cpu
from vision2d.ops.selective_scan_ref import selective_scan_ref, selective_scan_ref_backward
from op_harness import TOLERANCES
from selective_scan_cases import make_inputs, make_low_rank_inputs, random_orders

pytestmark = pytest.mark.skipif(
    selective_scan_cpu.unavailable_reason(torch.device("cpu")) is not None,
    reason=f"cpu backend unavailable: {selective_scan_cpu.unavailable_reason(torch.device('cpu'))}")


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _check_against_reference(shape, dtype=torch.float32, merge=True, order=None, delta_softplus=True, **options):
    args = list(make_inputs(*shape, dtype=dtype, **options))
    if not delta_softplus:  # raw deltas must be positive step sizes
        args[1] = torch.nn.functional.softplus(args[1].double()).to(dtype)
    order = random_orders(shape[2], shape[1]) if order is None else order
    ref_args = [a.double() if a is not None else None for a in args]
    atol, rtol = TOLERANCES[dtype]
    y_ref = selective_scan_ref(*ref_args, delta_softplus, order, merge)
    y = selective_scan_cpu.forward(*args, delta_softplus, order, merge)
    torch.testing.assert_close(y.double(), y_ref, atol=atol * y_ref.abs().max().item(), rtol=rtol)
    dy = torch.randn_like(y_ref)
    grads = selective_scan_cpu.backward(dy.to(dtype), *args, delta_softplus, order, merge)
    ref_grads = selective_scan_ref_backward(dy, *ref_args, delta_softplus, order, merge)
    for name, g, r in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), grads, ref_grads):
        if r is None:
            assert g is None
            continue
        torch.testing.assert_close(g.double(), r.double(), atol=atol * r.abs().max().item(), rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")
    return y, grads


@pytest.mark.parametrize("num_threads", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", [(1, 30, 4, 40, 1), (3, 12, 2, 20, 4), (2, 9, 4, 70, 16), (1, 13, 4, 150, 2)])
def test_channel_blocks_and_groups_across_threads(threads, num_threads, shape):
    # E = 40, 20, 70, 150 leave a partial block, and tiles of up to 4 blocks a partial tile in the forward (unmerged
    # outputs, even thread counts: one task per direction and tile); batch 1 and 3 split an item's blocks into groups
    # with their own dB / dC in the backward
    threads(num_threads)
    _check_against_reference(shape, merge=num_threads % 2 == 1)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 30, 4, 70, 1, 5), (2, 9, 4, 40, 16, 3)])
def test_delta_projection_across_tiles(threads, num_threads, shape):
    # the forward kernel projects the low-rank delta per tile of up to 4 channel blocks (E = 70, 40: partial blocks),
    # per direction when outputs are not merged (even thread counts)
    threads(num_threads)
    u, delta, A, B, C, D, bias, weight = make_low_rank_inputs(*shape)
    order = random_orders(shape[2], shape[1])
    y = selective_scan_cpu.forward(u, delta, A, B, C, D, bias, True, order, num_threads % 2 == 1, weight)
    y_ref = selective_scan_ref(*[a.double() for a in (u, delta, A, B, C, D, bias)], True, order,
                               num_threads % 2 == 1, weight.double())
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(y.double(), y_ref, atol=atol * y_ref.abs().max().item(), rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("merge", [True, False])
def test_checkpointed_backward(monkeypatch, dtype, merge):
    # no budget: segments of ceil(sqrt(L)) steps restarted from checkpointed states (L = 30: segments of 6)
    monkeypatch.setattr(selective_scan_cpu, "STATE_BUDGET_BYTES", 0)
    _check_against_reference((2, 30, 4, 19, 4), dtype=dtype, merge=merge, order=cross_scan_orders(5, 6))


def test_cross_scan_of_an_image():
    _check_against_reference((2, 63, 4, 33, 1), order=cross_scan_orders(7, 9))


def test_without_softplus_d_and_bias():
    _check_against_reference((2, 11, 2, 18, 4), delta_softplus=False, with_d=False, with_bias=False)


def test_large_deltas_saturate_softplus():
    _check_against_reference((1, 17, 4, 17, 16), delta_scale=30.0)


def test_results_do_not_depend_on_timing(threads):
    threads(2)
    args = make_inputs(3, 20, 4, 50, 4)
    order = random_orders(4, 20)
    dy = torch.randn(3, 20, 50)
    first = selective_scan_cpu.backward(dy, *args, True, order, True)
    for _ in range(3):
        again = selective_scan_cpu.backward(dy, *args, True, order, True)
        assert all(torch.equal(a, b) for a, b in zip(first, again) if a is not None)


@pytest.mark.parametrize("shape", [(0, 5, 4, 3, 2), (2, 0, 4, 3, 2), (2, 5, 4, 0, 2), (2, 5, 0, 3, 2),
                                   (2, 5, 4, 3, 0)], ids=["batch0", "L0", "E0", "K0", "N0"])
@pytest.mark.parametrize("merge", [True, False])
def test_empty_dimensions(shape, merge):
    args = make_inputs(*shape)
    order = random_orders(shape[2], shape[1])
    y = selective_scan_cpu.forward(*args, True, order, merge)
    torch.testing.assert_close(y, selective_scan_ref(*args, True, order, merge))
    dy = torch.randn(y.shape)
    grads = selective_scan_cpu.backward(dy, *args, True, order, merge)
    for g, r in zip(grads, selective_scan_ref_backward(dy, *args, True, order, merge)):
        torch.testing.assert_close(g, r)


def test_other_devices_are_refused():
    assert "CPU tensors only" in selective_scan_cpu.unavailable_reason(torch.device("meta"))
