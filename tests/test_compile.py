"""torch.compile and torch.export of every family (its test_* variant) at more than one input size, as detection and
segmentation feed them (docs/timm.md, "Dynamic shapes"): a training step (forward and backward) compiled at a square,
then a non-square size, with outputs and every parameter gradient equal to eager; an exported program with dynamic
height and width run at other sizes; and every vision2d op returning the shapes, strides and dtypes its fake
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
    # a gradient that is zero in exact arithmetic (e.g. of an attention key norm's bias: softmax ignores a shift
    # shared by all keys) is rounding noise in both: measured against 1e-4 of the largest gradient instead
    floor = 1e-4 * max(grad.abs().max().item() for grad in expected_grads.values())
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


# export traces at a size where every map of every family is at least 2x2 (PyTorch specialises sizes 0 and 1; the
# smallest for all families is MSVMamba's, 68 pixels: its stride-64 low-resolution map), non-square; then runs at
# other sizes: another one, the transposed one (H and W independent) and odd ones (odd maps in patch merging)
EXPORT_SIZE, EXPORTED_RUN_SIZES = (72, 96), [(80, 88), (96, 72), (69, 77)]


@pytest.mark.parametrize("name", TEST_MODELS)
def test_export_with_dynamic_height_and_width(name):
    """One exported program for other sizes. Dim.AUTO: PyTorch's solver cannot prove some always-true relations of
    the derived sizes (e.g. `1 % (32 * ((1 + W // 4) // 2)) != 0`, from ordering strides) for a Dim range."""
    model = make_model(name).eval()
    dynamic = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    exported = torch.export.export(model, (torch.randn(2, 3, *EXPORT_SIZE),), dynamic_shapes=(dynamic,))
    # and at the smallest size the program says it takes (its range constraints; docs/timm.md lists them)
    shape = next(node for node in exported.graph.nodes if node.name == exported.graph_signature.user_inputs[0])
    smallest = tuple(exported.range_constraints[size.node.expr].lower for size in shape.meta["val"].shape[2:])
    for size in EXPORTED_RUN_SIZES + [smallest]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert relative_error(exported.module()(x), model(x)) <= 1e-5, size


# Compile time on 2 cores (aot_eager): MSVMamba's dynamic-shape graph takes minutes (its bilinear upsampling of the
# low-resolution map between symbolic sizes), so CI compiles it with static shapes at each size; docs/timm.md
STATIC_MODELS = ["test_msvmamba"]


@pytest.mark.parametrize("name, dynamic", [(name, False if name in STATIC_MODELS else None) for name in TEST_MODELS]
                         + [(name, True) for name in DYNAMIC_TRUE_MODELS])
def test_training_under_compile_at_several_sizes(name, dynamic):
    """The default compiles static shapes first and once more with dynamic H and W at the second size; dynamic=True
    compiles once (after a square input duck sizing would make H and W one symbol: turned off here, see docs);
    dynamic=False compiles at every size. A third size then runs without compiling again (not for dynamic=False)."""
    torch._dynamo.reset()
    model = make_model(name)
    compiled = torch.compile(model, dynamic=dynamic, backend=BACKEND)
    compiling_sizes = {None: 2, True: 1, False: 2}[dynamic]
    with symbolic_shapes_config.patch(use_duck_shape=dynamic is not True):
        for i, size in enumerate(SIZES if dynamic is not False else SIZES[:2]):
            with torch.compiler.set_stance("default" if i < compiling_sizes else "fail_on_recompile"):
                assert_step_equals_eager(compiled, model, size, tolerance=1e-4)
