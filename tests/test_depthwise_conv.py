"""`depthwise_conv2d` (depthwise k x k conv of channels-last maps with a fused residual and activation) and the
`DepthwiseConv2d` layer: the reference against nn.Conv2d, every backend against the float64 reference (forward and
every gradient) over kernel sizes, strides, activations, odd shapes and dtypes, the custom-op contract, bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision2d.layers import DepthwiseConv2d
from vision2d.ops import depthwise_conv2d
from vision2d.ops.depthwise_conv import DEPTHWISE_CONV_BACKENDS
from vision2d.ops.depthwise_conv_ref import ACTIVATIONS, depthwise_conv_ref
from op_harness import DTYPES, assert_matches_reference, require_backend

BACKENDS = ["reference", "cpu"]
# (batch, H, W, C, k, stride, activation, residual): channel counts below, at and off the CPU kernel's 16-lane blocks,
# maps smaller than the kernel, rows narrower than the kernel's interior, every activation
CASES = [(2, 9, 7, 20, 3, 1, "silu", False), (1, 14, 15, 32, 3, 1, "none", True), (1, 13, 11, 48, 7, 2, "silu", False),
         (2, 5, 6, 33, 3, 2, "relu", False), (1, 8, 9, 16, 3, 1, "gelu", True), (1, 3, 2, 17, 5, 1, "gelu", False),
         (1, 1, 1, 8, 7, 2, "silu", False), (1, 6, 5, 4, 9, 1, "relu", True), (3, 4, 12, 40, 1, 1, "none", False)]


def make_inputs(batch, H, W, C, k, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, H, W, C, generator=g).to(dtype)
    weight = (torch.randn(C, 1, k, k, generator=g) / k).to(dtype)
    return x, weight, torch.randn(C, generator=g).to(dtype) if bias else None


def conv_ref(x, weight, bias, stride=1, activation="none", residual=False):
    return depthwise_conv_ref(x, weight, bias, stride, activation, residual)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("stride, residual", [(1, False), (1, True), (2, False)])
def test_reference_is_the_torch_layers(activation, stride, residual):
    x, weight, bias = make_inputs(2, 7, 10, 12, 5, torch.float64)
    conv = nn.Conv2d(12, 12, 5, stride=stride, padding=2, groups=12, dtype=torch.float64)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    z = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + (x if residual else 0)
    expected = {"none": z, "relu": F.relu(z), "silu": F.silu(z), "gelu": F.gelu(z)}[activation]
    torch.testing.assert_close(conv_ref(x, weight, bias, stride, activation, residual), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_backends_match_reference(backend, case):
    require_backend(DEPTHWISE_CONV_BACKENDS, backend)
    *shape, stride, activation, residual = case
    args = make_inputs(*shape, bias=shape[0] != 3)
    assert_matches_reference(depthwise_conv2d, conv_ref, args, ("x", "weight", "bias"), torch.float32, backend,
                             stride=stride, activation=activation, residual=residual)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != "fp32"])
def test_dtypes(backend, dtype):
    require_backend(DEPTHWISE_CONV_BACKENDS, backend)
    args = make_inputs(2, 6, 7, 24, 3, DTYPES[dtype])
    assert_matches_reference(depthwise_conv2d, conv_ref, args, ("x", "weight", "bias"), DTYPES[dtype], backend,
                             activation="silu", residual=True)


def test_cpu_kernel_uses_threads_and_matches_one_thread():
    """A map large enough for the kernel's parallel path gives the same bits on 1 and 2 threads."""
    require_backend(DEPTHWISE_CONV_BACKENDS, "cpu")
    x, weight, bias = make_inputs(1, 30, 31, 72, 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = depthwise_conv2d(x, weight, bias, activation="gelu", backend="cpu")
        torch.set_num_threads(2)
        two = depthwise_conv2d(x, weight, bias, activation="gelu", backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(one, conv_ref(x, weight, bias, activation="gelu"), atol=2e-6, rtol=1e-5)


def test_any_strides_and_weight_layouts():
    x, weight, bias = make_inputs(2, 5, 6, 10, 3)
    strided = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    expected = conv_ref(x, weight, bias, activation="relu")
    torch.testing.assert_close(depthwise_conv2d(strided, weight, bias, activation="relu"), expected)
    torch.testing.assert_close(depthwise_conv2d(x, weight[:, 0], bias, activation="relu"), expected)


def test_layer_loads_conv2d_weights_and_matches_it():
    conv = nn.Conv2d(24, 24, 7, stride=2, padding=3, groups=24)
    layer = DepthwiseConv2d(24, 7, stride=2, activation="silu")
    layer.load_state_dict(conv.state_dict())  # strict: the same keys and shapes
    x = torch.randn(2, 9, 12, 24)
    torch.testing.assert_close(layer(x), F.silu(conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1), atol=1e-5,
                               rtol=1e-5)
    assert "activation='silu'" in repr(layer)


def test_opcheck():
    x, weight, bias = make_inputs(2, 5, 6, 20, 3)
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), 1, "gelu", True, "auto")
    torch.library.opcheck(torch.ops.vision2d.depthwise_conv2d.default, args)
    torch.library.opcheck(torch.ops.vision2d.depthwise_conv2d.default, (x, weight, None, 2, "silu", False, "auto"))


def test_compile_fullgraph_and_meta_shapes():
    x, weight, bias = make_inputs(1, 7, 9, 16, 3)

    def block(x):
        return depthwise_conv2d(depthwise_conv2d(x, weight, bias, activation="silu"), weight, None, stride=2)

    torch.testing.assert_close(torch.compile(block, fullgraph=True, backend="eager")(x), block(x))
    with torch.device("meta"):
        y = depthwise_conv2d(torch.empty(2, 7, 9, 16), torch.empty(16, 1, 5, 5), torch.empty(16), stride=2)
    assert y.shape == (2, 4, 5, 16) and y.device.type == "meta"


@pytest.mark.parametrize("call, message", [
    (lambda: depthwise_conv2d(torch.randn(4, 4, 6), torch.randn(6, 1, 3, 3)), "x must be 4-D"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(5, 1, 3, 3)), "C = 6"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 4, 4)), "k odd"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 2, 3, 3)), "weight must be"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 3, 3), torch.randn(5)), "bias must be"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6).int(), torch.randn(6, 1, 3, 3)), "x has dtype"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 3, 3), stride=0), "positive int"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 3, 3), activation="tanh"), "activation"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 3, 3), stride=2, residual=True),
     "needs stride 1"),
    (lambda: depthwise_conv2d(torch.randn(1, 4, 4, 6), torch.randn(6, 1, 3, 3), backend="triton"),
     "unknown scan backend"),
    (lambda: DepthwiseConv2d(6, 3, activation="swish"), "activation must be"),
    (lambda: DepthwiseConv2d(6, 4), "odd kernel_size"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_scan_backend_variable_for_a_backend_the_op_lacks(monkeypatch):
    """VISION2D_SCAN_BACKEND=triton picks Triton for the ops that have it; this op, without one, takes "auto"; a name
    that is no backend at all is an error."""
    x, weight, bias = make_inputs(1, 4, 5, 8, 3)
    monkeypatch.delenv("VISION2D_SCAN_BACKEND", raising=False)
    fastest = DEPTHWISE_CONV_BACKENDS.resolve("cpu")
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "triton")
    assert DEPTHWISE_CONV_BACKENDS.resolve("cpu") == fastest
    torch.testing.assert_close(depthwise_conv2d(x, weight, bias), conv_ref(x, weight, bias))
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "trition")
    with pytest.raises(ValueError, match="names no backend"):
        depthwise_conv2d(x, weight, bias)


def test_custom_op_is_skipped_only_where_nothing_observes_it():
    """Eager calls without autograd run the op's function directly (`backends.call_op`); a dispatch mode and autograd
    see the custom op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(str(func))
            return func(*args, **(kwargs or {}))

    x, weight, bias = make_inputs(1, 5, 6, 8, 3)
    with torch.no_grad(), Record() as record:
        y = depthwise_conv2d(x, weight, bias, activation="silu")
    assert any("vision2d.depthwise_conv2d" in call for call in record.calls), record.calls
    torch.testing.assert_close(y, depthwise_conv2d(x, weight, bias, activation="silu"))
    leaf = x.clone().requires_grad_()
    assert "depthwise_conv2d" in type(depthwise_conv2d(leaf, weight, bias).grad_fn).__name__.lower()
