"""vision2d.layers.linear / Linear / Mlp: F.linear's (and timm Mlp's) results, oneDNN's product in CPU float32
inference only, and only where chosen (CPUs with AVX-512; the tests of its path turn it on on any CPU)."""
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

from timm.layers import Mlp as TimmMlp

from vision2d.layers import Linear, Mlp, linear

linear_module = importlib.import_module("vision2d.layers.linear")  # the package exports the function of that name

ONEDNN_OP = "mkldnn::_linear_pointwise"


def _onednn_calls(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key == ONEDNN_OP)


def _ran_onednn(fn) -> bool:
    return _onednn_calls(fn) > 0


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN's path chosen, as on a CPU with AVX-512 (the op itself runs on any x86 CPU)."""
    monkeypatch.setattr(linear_module, "_ONEDNN", True)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 4, 12), (0, 12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_runs_onednn_with_f_linear_results(onednn, shape, bias, mode):
    torch.manual_seed(0)
    layer = Linear(12, 7, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        assert _ran_onednn(lambda: layer(x))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        half = layer.weight[:3]  # a contiguous slice, as the mixers' in_proj halves
        torch.testing.assert_close(linear(x, half), F.linear(x, half))


def test_autograd_compile_and_other_dtypes_take_f_linear(onednn):
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


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
@pytest.mark.parametrize("act_layer", [nn.GELU, nn.ReLU])
def test_mlp_matches_timm_mlp_and_fuses_exact_gelu(onednn, act_layer):
    torch.manual_seed(0)
    mlp, reference = Mlp(16, 40, act_layer=act_layer), TimmMlp(16, 40, act_layer=act_layer)
    assert list(mlp.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(mlp.state_dict())
    x = torch.randn(2, 3, 5, 16) * 3  # pre-activations of both signs, some large
    with torch.no_grad():
        # fc1 + GELU in one oneDNN call; with ReLU (not fused) fc1 and fc2 each one
        assert _onednn_calls(lambda: mlp(x)) == 2
        assert mlp.fuses_gelu == (act_layer is nn.GELU)
        torch.testing.assert_close(mlp(x), reference(x))
    x.requires_grad_()
    assert not _ran_onednn(lambda: mlp(x).sum().backward())
    torch.testing.assert_close(mlp(x), reference(x))
    with pytest.raises(ValueError, match="use_conv"):
        Mlp(16, 40, use_conv=True)


def test_without_onednn_chosen_inference_takes_f_linear(monkeypatch):
    monkeypatch.setattr(linear_module, "_ONEDNN", False)  # a CPU without AVX-512
    torch.manual_seed(0)
    mlp, reference = Mlp(16, 40), TimmMlp(16, 40)
    reference.load_state_dict(mlp.state_dict())
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        assert not _ran_onednn(lambda: mlp(x))
        torch.testing.assert_close(mlp(x), reference(x))
