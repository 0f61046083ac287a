"""vision2d.layers.linear / Linear: F.linear's results, oneDNN's product in CPU float32 inference only."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from vision2d.layers import Linear, linear

ONEDNN_OP = "mkldnn::_linear_pointwise"


def _ran_onednn(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any(event.key == ONEDNN_OP for event in prof.key_averages())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 4, 12), (0, 12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_runs_onednn_with_f_linear_results(shape, bias, mode):
    torch.manual_seed(0)
    layer = Linear(12, 7, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        assert _ran_onednn(lambda: layer(x))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        half = layer.weight[:3]  # a contiguous slice, as the mixers' in_proj halves
        torch.testing.assert_close(linear(x, half), F.linear(x, half))


def test_autograd_compile_and_other_dtypes_take_f_linear():
    torch.manual_seed(0)
    layer = Linear(12, 7)
    x = torch.randn(4, 12, requires_grad=True)
    assert not _ran_onednn(lambda: layer(x).sum().backward())  # training: ATen's product and its backward
    reference = nn.Linear(12, 7)
    reference.load_state_dict(layer.state_dict())
    x_ref = x.detach().requires_grad_()
    reference(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    with torch.no_grad():
        x64, w64 = torch.randn(4, 12, dtype=torch.float64), layer.weight.double()
        assert not _ran_onednn(lambda: linear(x64, w64))
        assert torch.equal(linear(x64, w64), F.linear(x64, w64))
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x.detach()), F.linear(x.detach(), layer.weight, layer.bias))
    meta = Linear(12, 7, device="meta")
    assert meta(torch.empty(3, 12, device="meta")).shape == (3, 7)


def test_same_parameters_and_keys_as_nn_linear():
    layer, reference = Linear(6, 5, bias=False), nn.Linear(6, 5, bias=False)
    assert list(layer.state_dict()) == list(reference.state_dict()) == ["weight"]
    layer.load_state_dict(reference.state_dict())
    assert isinstance(layer, nn.Linear)
