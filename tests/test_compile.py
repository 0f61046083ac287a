"""torch.compile and torch.export of every family (its test_* variant) at more than one input size, as detection and
segmentation feed them (docs/timm.md, "Dynamic shapes"): a training step (forward and backward) compiled at a square,
then a non-square size, with outputs and every parameter gradient equal to eager; an exported program with dynamic
batch, height and width run at other sizes; and every vision2d op returning the shapes, strides and dtypes its fake
(meta) implementation promises, which compiled graphs rely on."""
import os

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental import _config as symbolic_shapes_config
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

import vision2d  # registers the models; sets torch._functorch.config.recompute_views (docs/timm.md)

TEST_MODELS = vision2d.list_models("test_*")
SIZES = [(64, 64), (72, 96), (80, 88)]  # square first (PyTorch's duck sizing then assumes H == W), then two others
# Inductor's C++ code generation takes minutes per model on 2 cores: CI compiles with aot_eager (dynamo, AOTAutograd's
# joint graph with symbolic sizes, the partitioner, the ops' fakes); VISION2D_TEST_INDUCTOR=1 runs the same checks
# with Inductor (docs/timm.md, "Dynamic shapes", has the numbers of such a run)
BACKEND = "inductor" if os.environ.get("VISION2D_TEST_INDUCTOR") == "1" else "aot_eager"
DYNAMIC_TRUE_MODELS = ["test_vmamba", "test_spatial_mamba"]  # dynamic=True as well: a representative pair (CI time)


def make_model(name):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=7, drop_path_rate=0.0).train()  # no random drop paths to compare


def train_step(forward, model, x):
    """Output of `forward` (the model or its compiled wrapper) and the model's parameter gradients, one train step."""
    out = forward(x)
    out.square().sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def relative_error(actual, expected, floor=1e-30):
    """Largest error relative to the expected tensor's largest magnitude (at least `floor`)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(floor)).item()


def assert_step_equals_eager(compiled, model, size, tolerance):
    x = torch.randn(2, 3, *size)
    out, grads = train_step(compiled, model, x)
    expected, expected_grads = train_step(model, model, x)
    assert relative_error(out, expected) <= tolerance, f"output at {size}"
    assert grads.keys() == expected_grads.keys()
    # a gradient that is zero in exact arithmetic (an attention key norm's bias: softmax ignores a shift shared by all
    # keys; a conv bias before BatchNorm or a norm's bias before another norm) is rounding noise in both: measured
    # against 1e-2 of the largest gradient instead (Inductor's fused reductions: such noise up to 2.6e-7 of the largest
    # gradient, docs/timm.md), so that its error may be up to 1e-6 of the largest gradient
    floor = 1e-2 * max(grad.abs().max().item() for grad in expected_grads.values())
    for name, grad in expected_grads.items():
        assert relative_error(grads[name], grad, floor) <= tolerance, f"gradient of {name} at {size}"


class FakeContract(TorchDispatchMode):
    """Runs the fake implementation of every vision2d op beside the real one and records where they disagree."""

    def __init__(self):
        super().__init__()
        self.ops, self.mismatches = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "vision2d":
            self.ops.add(func.name())
            with FakeTensorMode() as mode:
                fake_out = func(*tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t,
                                          (args, kwargs))[0], **kwargs)
            for i, (real, fake) in enumerate(zip(tree_leaves(out), tree_leaves(fake_out))):
                strides_agree = all(a == b for a, b, n in zip(real.stride(), fake.stride(), real.shape) if n > 1)
                if real.shape != fake.shape or real.dtype != fake.dtype or not strides_agree:
                    self.mismatches.append(f"{func.name()} output {i}: real {tuple(real.shape)} {real.stride()} "
                                           f"{real.dtype}, fake {tuple(fake.shape)} {fake.stride()} {fake.dtype}")
        return out


@pytest.mark.parametrize("name", TEST_MODELS)
def test_ops_return_what_their_fakes_promise(name):
    model = make_model(name)
    contract = FakeContract()
    with contract:
        train_step(model, model, torch.randn(2, 3, *SIZES[1]))
    assert any(op.endswith("_backward") for op in contract.ops), contract.ops  # the scan ran forward and backward
    assert not contract.mismatches


# export traces at a size where every map of every family is at least 2x2 (PyTorch specialises sizes 0 and 1),
# non-square, and the program runs at other sizes: another one, the transposed one (H and W independent), odd ones
# (odd maps in patch merging) and the smallest the family takes (its deepest maps 2x2; docs/timm.md), there at batch 1
EXPORT_SIZE, EXPORTED_RUN_SIZES = (72, 96), [(80, 88), (96, 72), (69, 77)]
SMALLEST_SIZE = {"test_plainmamba": 17, "test_mamba2d": 35, "test_localmamba": 36, "test_msvmamba": 68}  # else 33


@pytest.mark.parametrize("name", TEST_MODELS)
def test_export_with_dynamic_batch_height_and_width(name):
    """One exported program for all batch sizes and all heights and widths from the family's smallest size up: export
    refuses the Dim ranges unless the program holds over all of them."""
    model = make_model(name).eval()
    Dim, smallest = torch.export.Dim, SMALLEST_SIZE.get(name, 33)
    dynamic = {0: Dim("batch"), 2: Dim("height", min=smallest), 3: Dim("width", min=smallest)}
    exported = torch.export.export(model, (torch.randn(2, 3, *EXPORT_SIZE),), dynamic_shapes=(dynamic,))
    for batch, size in [(3, size) for size in EXPORTED_RUN_SIZES] + [(1, (smallest, smallest))]:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            assert relative_error(exported.module()(x), model(x)) <= 1e-5, (batch, size)


@pytest.mark.parametrize("name, dynamic", [(name, None) for name in TEST_MODELS]
                         + [(name, True) for name in DYNAMIC_TRUE_MODELS])
def test_training_under_compile_at_several_sizes(name, dynamic):
    """The default compiles static shapes first and once more with dynamic H and W at the second size; dynamic=True
    compiles once (after a square input duck sizing would make H and W one symbol: turned off here, see docs). A
    third size then runs without compiling again."""
    torch._dynamo.reset()
    model = make_model(name)
    compiled = torch.compile(model, dynamic=dynamic, backend=BACKEND)
    compiling_sizes = {None: 2, True: 1}[dynamic]
    with symbolic_shapes_config.patch(use_duck_shape=dynamic is not True):
        for i, size in enumerate(SIZES):
            with torch.compiler.set_stance("default" if i < compiling_sizes else "fail_on_recompile"):
                assert_step_equals_eager(compiled, model, size, tolerance=1e-4)
