"""Spatial-Mamba: parity with the official code (github EdwardChasel/Spatial-Mamba @ 71221eb) from a fixture it
generated, official parameter counts, the merged fusion kernel never going stale, checkpoint layouts (classifier,
`model` + `model_ema`, released files with a pickled yacs config, mmdet / mmseg backbones) and errors. The timm
contract shared by all models is in test_model_contract.py; the ops in test_state_fusion.py.

`tests/data/official_spatial_mamba_parity.pt` holds the official state dict of a small model with perturbed random
weights, inputs (224x224 and 2 x 64x96) and the official logits and stage outputs; `tests/data/README.md` says how
it was made.
"""
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import spatial_mamba
from vision2d.ops import state_fusion
from vision2d.ops.state_scan_fusion import compose_state_scan_fusion
from vision2d.ops.state_scan_ref import state_scan_ref
from test_vmamba import _fake_yacs_module
from parity_helpers import rel_err, save  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_spatial_mamba_parity.pt"
OFFICIAL_COMMIT = "71221ebfaa5fe797445be0292f0ec7048fe457c1"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"spatial_mamba_tiny": 26_748_862, "spatial_mamba_small": 43_074_280,
                   "spatial_mamba_base": 95_745_592}
OFFICIAL_DROP_PATH = {"spatial_mamba_tiny": 0.2, "spatial_mamba_small": 0.3, "spatial_mamba_base": 0.5}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def official_sd(fixture):
    return {k: v.float() if v.is_floating_point() else v for k, v in fixture["state_dict"].items()}


def create(path: str, **kwargs):
    return timm.create_model("test_spatial_mamba", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


def assert_matches_official(model, case):
    x = case["input"].float()
    with torch.no_grad():
        logits = model(x)
        stages = model.forward_intermediates(x, intermediates_only=True)
    size = tuple(x.shape)
    err = rel_err(logits, case["logits"])
    assert err < REL_TOL, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
    for i, (ours, official) in enumerate(zip(stages, case["stages"])):
        assert ours.shape == official.shape, f"stage {i}: {tuple(ours.shape)} vs {tuple(official.shape)}"
        err = rel_err(ours, official)
        assert err < REL_TOL, f"stage {i} differs from the official one for input {size}: rel err {err:.3g}"


def test_fixture_is_small_and_official(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT
    assert fixture["official_param_counts"] == {k.rsplit("_", 1)[1]: v for k, v in OFFICIAL_PARAMS.items()}


def test_official_parity(fixture, official_sd, tmp_path):
    """Both cases (1x3x224x224 and 2x3x64x96, non-square) through timm's pretrained-file path, eval and fp32."""
    model = create(save({"model": official_sd}, tmp_path / "official.pth"))
    assert sum(p.numel() for p in model.parameters()) == fixture["test_param_count"]
    for case in fixture["cases"]:
        assert_matches_official(model, case)


def test_fixture_discriminates_the_fusion_padding(fixture, official_sd, tmp_path, monkeypatch):
    """Zero padding where the official fusion replicates the border must break parity, so the test above has
    teeth."""
    model = create(save(official_sd, tmp_path / "raw.pth"))

    def zero_padded_fusion(h, weight):
        p = weight.shape[-1] // 2
        return F.conv2d(h.permute(0, 3, 1, 2), weight[:, None], padding=p, groups=h.shape[-1]).permute(0, 2, 3, 1)

    def zero_padded(*args):  # state_scan_fusion's arguments, the backend last
        return compose_state_scan_fusion(state_scan_ref, zero_padded_fusion, *args[:-1])

    monkeypatch.setattr(spatial_mamba, "state_scan_fusion", zero_padded)
    case = fixture["cases"][1]
    with torch.no_grad():
        assert rel_err(model(case["input"].float()), case["logits"]) > 1e-3


def test_merged_kernel_follows_the_weights_after_eval(fixture, official_sd, tmp_path):
    """The official module caches its merged 11x11 kernel on the first eval call and serves it forever; here loading
    other weights (or training) after an eval call changes the output exactly as a fresh model would."""
    case = fixture["cases"][1]
    x = case["input"].float()
    model = timm.create_model("test_spatial_mamba").eval()
    with torch.no_grad():
        model(x)  # an eval call with the initial weights
    model.load_state_dict(spatial_mamba.checkpoint_filter_fn(official_sd, model))
    with torch.no_grad():
        assert rel_err(model(x), case["logits"]) < REL_TOL
    fusion = model.stages[0].blocks[0].mixer.state_fusion
    with torch.no_grad():
        fusion.alpha.mul_(-1.5)
        fusion.kernel_3_2[:, :, 0, 0] += 1.0
        changed = model(x)
    fresh = timm.create_model("test_spatial_mamba").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, fresh(x), rtol=0, atol=0)
        assert rel_err(changed, case["logits"]) > 1e-3


def test_eval_kernels_kept_between_calls_follow_every_change(official_sd):
    """Without autograd the merged kernel, A and the folded BatchNorms are kept between calls
    (`vision2d.layers.derived`): in-place updates, load_state_dict and dtype moves after such calls give what a fresh
    model with the same weights gives, and inference_mode / no_grad calls share them."""
    x = torch.randn(1, 3, 40, 56)
    model = timm.create_model("test_spatial_mamba").eval()
    model.load_state_dict(spatial_mamba.checkpoint_filter_fn(official_sd, model))
    with torch.inference_mode():
        model(x)
    with torch.no_grad():
        before = model(x)
        block = model.stages[1].blocks[0]
        block.cpe1.weight[:, :, 0, 1] += 0.5
        block.mixer.A_logs.sub_(0.3)
        model.stem.conv1.norm.running_var.mul_(2.0)
        model.stages[2].downsample.conv[2].norm.bias.add_(0.1)
        changed = model(x)
    fresh = timm.create_model("test_spatial_mamba").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, fresh(x), rtol=0, atol=0)
        assert rel_err(changed, before) > 1e-3
        model.double()
        torch.testing.assert_close(model(x.double()), fresh.double()(x.double()), rtol=0, atol=0)


def test_training_mode_fusion_is_the_official_three_convolutions(official_sd):
    """In training mode the official fusion sums three replicate-padded dilated convolutions scaled by alpha; the
    merged kernel gives the same output and the same gradients for the kernels and alpha."""
    model = timm.create_model("test_spatial_mamba")
    model.load_state_dict(spatial_mamba.checkpoint_filter_fn(official_sd, model))
    fusion = model.stages[1].blocks[0].mixer.state_fusion.train()
    h = torch.randn(2, 5, 7, fusion.kernel_3.shape[0])
    kernels = (fusion.kernel_3, fusion.kernel_3_1, fusion.kernel_3_2)
    nchw = h.permute(0, 3, 1, 2)
    expected = sum(a * F.conv2d(F.pad(nchw, (d,) * 4, mode="replicate"), k, dilation=d, groups=k.shape[0])
                   for a, k, d in zip(fusion.alpha, kernels, (1, 3, 5))).permute(0, 2, 3, 1)
    params = [*kernels, fusion.alpha]
    grads_expected = torch.autograd.grad(expected.square().sum(), params)
    out = state_fusion(h, fusion.merged_kernel())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out.square().sum(), params), grads_expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def released_layout(state_dict: dict, monkeypatch) -> dict:
    """The layout of the released classification files (save_checkpoint_ema): live and EMA weights, optimizer,
    scheduler, and the training config as a pickled yacs CfgNode. The EMA weights are zeroed: `model` must win."""
    cfg_module = _fake_yacs_module()
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", cfg_module)
    CfgNode = cfg_module.CfgNode
    config = CfgNode({"MODEL": CfgNode({"TYPE": "spatial_mamba", "SPATIALMAMBA": CfgNode({"DEPTHS": [2, 4, 8, 4]})})})
    return {"model": dict(state_dict), "model_ema": {k: torch.zeros_like(v) for k, v in state_dict.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]}, "lr_scheduler": {"t_initial": 300},
            "max_accuracy": 83.5, "epoch": 299, "config": config, "steps": 0, "max_accuray_ema": 83.4}


@pytest.mark.parametrize("layout", ["model", "model_and_ema", "ema_only", "module_prefix", "released"])
def test_official_layouts_load_the_same_weights(official_sd, tmp_path, layout, monkeypatch):
    expected = create(save(official_sd, tmp_path / "raw.pth")).state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in official_sd.items()}
    obj = {"model": {"model": official_sd, "epoch": 1},
           "model_and_ema": {"model": official_sd, "model_ema": zeros},  # the official evaluation takes `model`
           "ema_only": {"model_ema": official_sd},
           "module_prefix": {"model": {f"module.{k}": v for k, v in official_sd.items()}}}.get(layout)
    if layout == "released":
        obj = released_layout(official_sd, monkeypatch)
    path = save(obj, tmp_path / f"{layout}.pth")
    monkeypatch.delitem(sys.modules, "yacs.config", raising=False)  # loading must not need yacs
    monkeypatch.delitem(sys.modules, "yacs", raising=False)
    loaded = create(path).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_official_mm_checkpoint_loads_with_its_output_norms(fixture, official_sd, tmp_path):
    """The backbone part of an official detector / segmentor checkpoint (Backbone_SpatialMamba: no norm / head,
    outnorm{i}) loads into the backbone model (feature_norms=True); its features are the official stage outputs
    through those norms."""
    generator = torch.Generator().manual_seed(0)
    dims = [s.shape[1] for s in fixture["cases"][0]["stages"]]
    backbone = {f"backbone.{k}": v for k, v in official_sd.items() if not k.startswith(("head.", "norm."))}
    outnorms = {}
    for i, dim in enumerate(dims):
        outnorms[i] = (1 + 0.2 * torch.randn(dim, generator=generator), 0.1 * torch.randn(dim, generator=generator))
        backbone[f"backbone.outnorm{i}.weight"], backbone[f"backbone.outnorm{i}.bias"] = outnorms[i]
    checkpoint = {"meta": {"epoch": 12}, "state_dict": {**backbone, "neck.lateral_convs.0.conv.weight": torch.zeros(1),
                                                        "decode_head.conv_seg.weight": torch.zeros(1)}}
    path = save(checkpoint, tmp_path / "mask_rcnn.pth")
    reference = timm.create_model("test_spatial_mamba", feature_norms=True)
    state_dict = spatial_mamba.checkpoint_filter_fn(timm.models.load_state_dict(path), reference)
    model = timm.create_model("test_spatial_mamba", features_only=True, feature_norms=True).eval()
    missing, unexpected = model.model.load_state_dict(state_dict, strict=False)
    assert not missing and all(k.startswith(("norm.", "head.")) for k in unexpected)  # the classifier's, at init
    case = fixture["cases"][1]
    with torch.no_grad():
        features = model(case["input"].float())
    for i, (ours, official) in enumerate(zip(features, case["stages"])):
        expected = F.layer_norm(official.permute(0, 2, 3, 1), (dims[i],), *outnorms[i], eps=1e-5).permute(0, 3, 1, 2)
        assert rel_err(ours, expected) < REL_TOL, f"feature {i}"


def test_classifier_checkpoint_starts_the_feature_norms_at_init(official_sd):
    reference = timm.create_model("test_spatial_mamba", feature_norms=True)
    state_dict = spatial_mamba.checkpoint_filter_fn(official_sd, reference)
    for i in range(4):
        weight, bias = state_dict[f"feature_norms.{i}.weight"], state_dict[f"feature_norms.{i}.bias"]
        assert torch.equal(weight, torch.ones_like(weight)) and not bias.any()


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_and_drop_path_equal_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(OFFICIAL_DROP_PATH[name])


def test_checkpoint_of_another_variant_is_rejected_with_key_report():
    with torch.device("meta"):
        tiny, small = timm.create_model("spatial_mamba_tiny"), timm.create_model("spatial_mamba_small")
    with pytest.raises(ValueError) as error:
        spatial_mamba.checkpoint_filter_fn({"model": small.state_dict()}, tiny)
    message = str(error.value)
    assert "unexpected (378): stages.2.blocks.10." in message and "depths [2, 4, 8, 4]" in message


def test_mismatched_official_checkpoint_lists_keys(official_sd):
    sd = dict(official_sd)
    sd["layers.0.blocks.0.self_attention.x_proj_weight"] = torch.zeros(5, 16)
    del sd["layers.1.downsample.conv.2.norm.weight"]
    sd["layers.0.blocks.0.self_attention.z_proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        spatial_mamba.checkpoint_filter_fn(sd, timm.create_model("test_spatial_mamba"))
    message = str(error.value)
    assert "missing (1): stages.2.downsample.conv.2.norm.weight" in message
    assert "unexpected (1): stages.0.blocks.0.mixer.z_proj.weight" in message
    assert "stages.0.blocks.0.mixer.x_proj_weight: checkpoint (5, 16) vs model (3, 16)" in message


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (37, 21)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_spatial_mamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_shortcuts_are_exact(official_sd):
    """In eval mode the stem and the downsamplings run image by image (a batch gives what its images give one by one)
    and each BatchNorm is folded into its conv (the same as conv -> BatchNorm with the running statistics)."""
    model = timm.create_model("test_spatial_mamba")
    model.load_state_dict(spatial_mamba.checkpoint_filter_fn(official_sd, model))
    x = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        eval_out = model.eval()(x)
        one_by_one = torch.cat([model(image) for image in x.split(1)])
        stem = model.stem
        calls = []
        stem.forward_batch = lambda images, f=stem.forward_batch: calls.append(len(images)) or f(images)
        model(x)
    assert calls == [1, 1, 1]
    torch.testing.assert_close(eval_out, one_by_one, rtol=1e-5, atol=1e-5)
    reference = spatial_mamba.ConvNormAct(3, 8, 3, stride=2, bias=True)
    with torch.no_grad():
        reference.norm.running_mean.normal_()
        reference.norm.running_var.uniform_(0.5, 2.0)
        reference.norm.weight.normal_()
        image = torch.randn(2, 3, 9, 11)
        folded = reference.eval()(image)
        expected = F.relu(F.batch_norm(reference.conv(image), reference.norm.running_mean, reference.norm.running_var,
                                       reference.norm.weight, reference.norm.bias, False, 0.0, reference.norm.eps))
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_bad_input_and_config_errors():
    model = timm.create_model("test_spatial_mamba")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=">= 1 pixel"):
        model(torch.randn(1, 3, 0, 8))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="same length"):
        spatial_mamba.SpatialMamba(depths=(1, 1), dims=(8, 16, 32))
    with pytest.raises(ValueError, match="dims must double"):
        spatial_mamba.SpatialMamba(depths=(1, 1), dims=(8, 24))
    with pytest.raises(ValueError, match="d_state=1"):
        spatial_mamba.SpatialMamba(depths=(1,), dims=(8,), d_state=4)


def test_converter_takes_model_from_a_released_file(fixture, official_sd, tmp_path, monkeypatch, capsys):
    """tools/convert_checkpoint.py finds the model of a released file (model + zeroed model_ema + yacs config) and
    writes the `model` weights: the converted file reproduces the official logits."""
    from test_vmamba import _convert_checkpoint_tool
    path = save(released_layout(official_sd, monkeypatch), tmp_path / "spatialmamba_tiny.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    out = tmp_path / "test_spatial_mamba.safetensors"
    assert _convert_checkpoint_tool().main([path, str(out)]) == 0, capsys.readouterr().err
    assert "test_spatial_mamba, 1000 classes" in capsys.readouterr().out
    case = fixture["cases"][1]
    with torch.no_grad():
        assert rel_err(create(str(out))(case["input"].float()), case["logits"]) < REL_TOL


@pytest.mark.parametrize("variant, drop_path", [("tiny", 0.2), ("small", 0.3), ("base", 0.5)])
def test_train_configs_hold_the_official_recipe(variant, drop_path, tmp_path):
    from vision2d.train.config import parse_args
    args = parse_args(["--config", str(Path(__file__).parents[1] / f"configs/train/spatial_mamba_{variant}.yaml"),
                       "--data-dir", str(tmp_path)])
    assert args.model == f"spatial_mamba_{variant}" and (args.drop_path, args.drop_rate) == (drop_path, 0.0)
    assert (args.opt, args.lr_base, args.lr_base_size, args.batch_size * args.grad_accum_steps) == \
           ("adamw", 5e-4, 512, 1024)
    assert (args.weight_decay, args.clip_grad, args.epochs, args.warmup_epochs, args.sched) == \
           (0.05, 5.0, 300, 20, "cosine")
    assert (args.warmup_lr, args.min_lr, args.model_ema, args.model_ema_decay) == (1e-6, 1e-5, True, 0.9999)
    assert (args.aa, args.mixup, args.cutmix, args.smoothing, args.reprob) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1,
                                                                               0.25)
