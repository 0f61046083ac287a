"""VMamba: parity with the official code (github MzeroMiko/VMamba @ 2ed52ea) from a fixture it generated, official
parameter counts, checkpoint layouts (classifier, EMA, released files with a pickled yacs config, mmdet / mmseg
backbones) and errors. The timm contract shared by all models is in test_models.py.

`tests/data/official_vmamba_parity.pt` holds two small official models (VSSM with the v2 options of the released
T/S/B, shrunk) with perturbed random weights, their official state dicts, inputs, and the official logits and stage
outputs; `tests/data/README.md` says how it was made.
"""
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import vmamba
from parity_helpers import rel_err, save  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_vmamba_parity.pt"
OFFICIAL_COMMIT = "2ed52ead062a51a64521ed3871d52914bf532876"
REL_TOL = 1e-4
# official VSSM parameter counts (fvcore parameter_count of the official configs vmambav2v_tiny_224,
# vmambav2_small_224, vmambav2_base_224) and drop path rates
OFFICIAL_PARAMS = {"vmamba_tiny": 30_249_064, "vmamba_small": 50_147_752, "vmamba_base": 88_557_800}
OFFICIAL_DROP_PATH = {"vmamba_tiny": 0.2, "vmamba_small": 0.3, "vmamba_base": 0.6}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def official_state_dict(entry) -> dict:
    """The official state dict in fp32 (the fixture stores the fp16-representable weights as fp16)."""
    return {k: v.float() for k, v in entry["checkpoint"]["model"].items()}


def create(entry, path: str, **kwargs):
    overlay = dict(file=path, num_classes=entry["model_kwargs"].get("num_classes", 1000))
    return timm.create_model(entry["model"], pretrained=True, pretrained_cfg_overlay=overlay,
                             **entry["model_kwargs"], **kwargs).eval()


def test_fixture_is_small_and_official_format(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT
    for entry in fixture["models"]:
        keys = entry["checkpoint"]["model"].keys()
        assert all(k.startswith(("patch_embed.", "layers.", "classifier.")) for k in keys)
        assert "layers.0.downsample.1.weight" in keys and "classifier.head.weight" in keys


def test_official_parity(fixture, tmp_path):
    """Every case of both fixture models (224x224, 57x83, 1x3, 40x29) through timm's pretrained-file path."""
    for index, entry in enumerate(fixture["models"]):
        model = create(entry, save({"model": official_state_dict(entry)}, tmp_path / f"official_{index}.pth"))
        for case in entry["cases"]:
            x = case["input"].float()
            with torch.no_grad():
                logits = model(x)
                stages = model.forward_intermediates(x, intermediates_only=True)
            size = tuple(x.shape)
            err = rel_err(logits, case["logits"])
            assert err < REL_TOL, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
            assert len(stages) == len(case["stages"])
            for i, (ours, official) in enumerate(zip(stages, case["stages"])):
                assert ours.shape == official.shape, f"stage {i}: {tuple(ours.shape)} vs {tuple(official.shape)}"
                err = rel_err(ours, official)
                assert err < REL_TOL, f"stage {i} differs from the official one for input {size}: rel err {err:.3g}"


def test_fixture_discriminates_scan_directions(fixture, tmp_path, monkeypatch):
    """Scanning rows where the official scans columns must break parity, so the test above has teeth."""
    entry = fixture["models"][0]
    model = create(entry, save(official_state_dict(entry), tmp_path / "raw.pth"))
    cross = vmamba.cross_scan_orders

    def rows_only(H, W, device=None):
        orders = cross(H, W, device=device)
        return torch.stack([orders[0], orders[0], orders[2], orders[2]])

    monkeypatch.setattr(vmamba, "cached_cross_scan_orders", rows_only)
    case = entry["cases"][1]
    with torch.no_grad():
        assert rel_err(model(case["input"].float()), case["logits"]) > 1e-3


def _fake_yacs_module():
    """A stand-in `yacs.config` whose CfgNode pickles as yacs' does (a dict subclass with attributes in __dict__)."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {},
                                  "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    return module


def released_layout(state_dict: dict, monkeypatch) -> dict:
    """The layout of the released classification files: live and EMA weights, optimizer, scheduler, and the
    training config as a pickled yacs CfgNode."""
    cfg_module = _fake_yacs_module()
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", cfg_module)
    CfgNode = cfg_module.CfgNode
    config = CfgNode({"MODEL": CfgNode({"TYPE": "vssm", "VSSM": CfgNode({"DEPTHS": [2, 2, 8, 2]})}),
                      "TRAIN": CfgNode({"EPOCHS": 300, "OPTIMIZER": CfgNode({"BETAS": (0.9, 0.999)})})})
    return {"model": {k: torch.zeros_like(v) for k, v in state_dict.items()}, "model_ema": dict(state_dict),
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999)}]},
            "lr_scheduler": {"t_initial": 300, "base_values": [5e-4]}, "max_accuracy": 82.6, "epoch": 264,
            "config": config, "max_accuracy_ema": 82.6}


@pytest.mark.parametrize("layout", ["raw", "model", "model_ema", "module_prefix", "released"])
def test_official_layouts_load_the_same_weights(fixture, tmp_path, layout, monkeypatch):
    entry = fixture["models"][0]
    sd = official_state_dict(entry)
    expected = create(entry, save(sd, tmp_path / "raw.pth")).state_dict()
    if layout == "raw":
        obj = sd
    elif layout == "model":
        obj = {"model": sd, "epoch": 1}
    elif layout == "model_ema":  # EMA weights win over the live ones (zeroed here, so a wrong pick shows)
        obj = {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "model_ema": sd}
    elif layout == "module_prefix":
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = released_layout(sd, monkeypatch)
    path = save(obj, tmp_path / f"{layout}.pth")
    monkeypatch.delitem(sys.modules, "yacs.config", raising=False)  # loading must not need yacs
    monkeypatch.delitem(sys.modules, "yacs", raising=False)
    loaded = create(entry, path).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_released_config_is_read_as_plain_data(fixture, tmp_path, monkeypatch):
    path = save(released_layout(official_state_dict(fixture["models"][0]), monkeypatch), tmp_path / "released.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    with pytest.raises(Exception, match="yacs.config.CfgNode"):
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals(vmamba.released_checkpoint_globals()):
        checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["config"] == {"MODEL": {"TYPE": "vssm", "VSSM": {"DEPTHS": [2, 2, 8, 2]}},
                                    "TRAIN": {"EPOCHS": 300, "OPTIMIZER": {"BETAS": (0.9, 0.999)}}}


def mm_layout(state_dict: dict, outnorms: dict) -> dict:
    """An official mmdet / mmseg checkpoint: MM_VSSM under `backbone.` (no classifier, outnorm{i}), plus neck and
    heads, in mmengine's `state_dict`."""
    backbone = {f"backbone.{k}": v for k, v in state_dict.items() if not k.startswith("classifier.")}
    backbone.update({f"backbone.outnorm{i}.{p}": t for (i, p), t in outnorms.items()})
    return {"meta": {"epoch": 12, "mmdet_version": "3.3.0"},
            "state_dict": {**backbone, "neck.lateral_convs.0.conv.weight": torch.zeros(4, 16, 1, 1),
                           "rpn_head.rpn_conv.weight": torch.zeros(4, 4, 3, 3),
                           "decode_head.conv_seg.weight": torch.zeros(150, 4, 1, 1)}}


def test_official_mm_checkpoint_loads_with_its_output_norms(fixture, tmp_path):
    """The backbone part of an official detector / segmentor checkpoint, outnorm{i} included, loads into the
    backbone model (feature_norms=True); its features are the official stage outputs through those norms."""
    entry = fixture["models"][0]
    generator = torch.Generator().manual_seed(0)
    dims = [s.shape[1] for s in entry["cases"][0]["stages"]]
    outnorms = {}
    for i, dim in enumerate(dims):
        outnorms[i, "weight"] = 1 + 0.2 * torch.randn(dim, generator=generator)
        outnorms[i, "bias"] = 0.1 * torch.randn(dim, generator=generator)
    path = save(mm_layout(official_state_dict(entry), outnorms), tmp_path / "mask_rcnn.pth")
    model = timm.create_model("test_vmamba", features_only=True, feature_norms=True).eval()
    reference = timm.create_model("test_vmamba", feature_norms=True)
    state_dict = vmamba.checkpoint_filter_fn(timm.models.load_state_dict(path), reference)
    missing, unexpected = model.model.load_state_dict(state_dict, strict=False)
    # the filter completes the classifier's norm and head from the reference; the features model has pruned them
    assert not missing and set(unexpected) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"}
    case = entry["cases"][1]
    with torch.no_grad():
        features = model(case["input"].float())
    for i, (ours, official) in enumerate(zip(features, case["stages"])):
        expected = F.layer_norm(official.permute(0, 2, 3, 1), (dims[i],), outnorms[i, "weight"], outnorms[i, "bias"],
                                eps=1e-5).permute(0, 3, 1, 2)
        assert rel_err(ours, expected) < REL_TOL, f"feature {i}"


def test_classifier_checkpoint_starts_the_feature_norms_at_init(fixture):
    """From an ImageNet classifier the mm backbone's output norms start at weight 1, bias 0 (as MM_VSSM's)."""
    reference = timm.create_model("test_vmamba", feature_norms=True)
    state_dict = vmamba.checkpoint_filter_fn(official_state_dict(fixture["models"][0]), reference)
    for i in range(4):
        weight, bias = state_dict[f"feature_norms.{i}.weight"], state_dict[f"feature_norms.{i}.bias"]
        assert torch.equal(weight, torch.ones_like(weight)) and not bias.any()


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_and_drop_path_equal_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(OFFICIAL_DROP_PATH[name])


def test_checkpoint_of_another_variant_is_rejected_with_key_report():
    with torch.device("meta"):
        tiny, small = timm.create_model("vmamba_tiny"), timm.create_model("vmamba_small")
    with pytest.raises(ValueError) as error:
        vmamba.checkpoint_filter_fn({"model": tiny.state_dict()}, small)
    message = str(error.value)
    assert "missing (126): stages.2.blocks.10." in message  # small has 15 blocks in stage 2 (18 tensors each), tiny 8
    assert "mis-shaped" in message and "stages.0.blocks.0.mixer.A_logs: checkpoint (384, 1) vs model (768, 1)" \
        in message


def test_mismatched_official_checkpoint_lists_keys(fixture):
    sd = official_state_dict(fixture["models"][0])
    sd["layers.0.blocks.0.op.x_proj_weight"] = torch.zeros(4, 5, 32)
    del sd["layers.1.downsample.3.weight"]
    sd["layers.0.blocks.0.op.z_proj.weight"] = torch.zeros(1)
    model = timm.create_model("test_vmamba")
    with pytest.raises(ValueError) as error:
        vmamba.checkpoint_filter_fn(sd, model)
    message = str(error.value)
    assert "missing (1): stages.2.downsample.norm.weight" in message
    assert "unexpected (1): stages.0.blocks.0.mixer.z_proj.weight" in message
    assert "mis-shaped (1): stages.0.blocks.0.mixer.x_proj_weight: checkpoint (4, 5, 32) vs model (4, 3, 32)" \
        in message


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (57, 83), (33, 16)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_vmamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_input_errors():
    model = timm.create_model("test_vmamba")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=">= 1 pixel"):
        model(torch.randn(1, 3, 0, 8))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="same length"):
        vmamba.VMamba(depths=(1, 1), dims=(8, 16, 32))


def test_mm_backbone_loads_an_official_detector_checkpoint_with_training_objects(fixture, tmp_path):
    """An official Mask R-CNN file as mmengine writes it (numpy history buffers in its message hub, which
    weights-only loading refuses) initialises VMambaBackbone through init_cfg, outnorms included."""
    pytest.importorskip("mmdet", reason="mmdet is not installed: run python tools/install_openmmlab.py")
    from mmengine.logging import MessageHub
    from mmengine.registry import MODELS

    import vision2d.mm  # noqa: F401  (registers VMambaBackbone)

    entry = fixture["models"][0]
    outnorms = {(i, p): torch.full((c,), 0.5 if p == "weight" else 0.25) for i, c in enumerate((16, 32, 64, 64))
                for p in ("weight", "bias")}
    checkpoint = mm_layout(official_state_dict(entry), outnorms)
    hub = MessageHub.get_instance("vmamba_test")
    hub.update_scalar("train/loss", 1.5)
    checkpoint["message_hub"] = hub.state_dict()
    path = save(checkpoint, tmp_path / "mask_rcnn_vssm_fpn_coco_test.pth")
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(path, weights_only=True)
    backbone = MODELS.build(dict(type="VMambaBackbone", arch="test", init_cfg=dict(type="Pretrained", checkpoint=path)))
    backbone.init_weights()
    model = backbone.model.model
    assert torch.equal(model.feature_norms[2].weight, outnorms[2, "weight"])
    assert torch.equal(model.stages[1].downsample.conv.weight, official_state_dict(entry)["layers.0.downsample.1.weight"])
    case = entry["cases"][1]
    with torch.no_grad():
        features = backbone.eval()(case["input"].float())
    expected = F.layer_norm(case["stages"][3].permute(0, 2, 3, 1), (64,), outnorms[3, "weight"], outnorms[3, "bias"],
                            eps=1e-5).permute(0, 3, 1, 2)
    assert rel_err(features[3], expected) < REL_TOL


def test_mm_backbone_rejects_a_checkpoint_of_another_variant(tmp_path):
    pytest.importorskip("mmdet", reason="mmdet is not installed: run python tools/install_openmmlab.py")
    from mmengine.registry import MODELS

    import vision2d.mm  # noqa: F401

    path = save({"model": timm.create_model("test_vmamba", dims=(16, 32, 48, 64)).state_dict()}, tmp_path / "o.pth")
    backbone = MODELS.build(dict(type="VMambaBackbone", arch="test", init_cfg=dict(type="Pretrained", checkpoint=path)))
    with pytest.raises(ValueError, match=r"does not match.*mis-shaped"):
        backbone.init_weights()


def _convert_checkpoint_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("convert_checkpoint",
                                                  Path(__file__).resolve().parents[1] / "tools/convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_checkpoint_infers_vmamba_from_a_released_file(fixture, tmp_path, monkeypatch, capsys):
    """A released-layout file (pickled yacs config, EMA weights) converts without --model, yacs absent."""
    entry = fixture["models"][0]
    sd = official_state_dict(entry)
    path = save(released_layout(sd, monkeypatch), tmp_path / "vssm_test_ckpt_epoch_1.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    tool = _convert_checkpoint_tool()
    out = tmp_path / "test_vmamba.safetensors"
    assert tool.main([path, str(out)]) == 0, capsys.readouterr().err
    assert "test_vmamba, 1000 classes" in capsys.readouterr().out
    converted = timm.create_model("test_vmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    case = entry["cases"][1]
    with torch.no_grad():
        assert rel_err(converted(case["input"].float()), case["logits"]) < REL_TOL
    backbone_only = save(mm_layout(sd, {}), tmp_path / "mask_rcnn.pth")
    assert tool.main([backbone_only, str(tmp_path / "o.safetensors")]) == 2
    assert "no classifier weight" in capsys.readouterr().err


@pytest.mark.parametrize("variant, drop_path", [("tiny", 0.2), ("small", 0.3), ("base", 0.6)])
def test_train_configs_hold_the_official_recipe(variant, drop_path, tmp_path):
    from vision2d.train.config import parse_args

    repo = Path(__file__).resolve().parents[1]
    args = parse_args(["--config", str(repo / f"configs/train/vmamba_{variant}.yaml"), "--data-dir", str(tmp_path)])
    assert (args.model, args.drop_path, args.drop_rate) == (f"vmamba_{variant}", drop_path, 0.0)
    # official: lr 5e-4 per 512 images at a global batch of 1024 (8 GPUs x 128), warm-up / min lr scaled alike
    assert (args.opt, args.lr_base, args.lr_base_size, args.batch_size * args.grad_accum_steps) == \
           ("adamw", 5e-4, 512, 1024)
    assert (args.weight_decay, args.clip_grad, args.epochs, args.warmup_epochs, args.warmup_lr, args.min_lr) == \
           (0.05, 5.0, 300, 20, 1e-6, 1e-5)
    assert (args.aa, args.mixup, args.cutmix, args.smoothing, args.reprob) == \
           ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)
    assert (args.model_ema, args.model_ema_decay, args.amp, args.amp_dtype) == (True, 0.9999, True, "float16")


def test_add_residual_writes_into_the_branch_only_where_safe():
    """The blocks' residual sum goes into the branch's buffer in inference when that buffer has the sum's dtype; a
    bfloat16 branch on a float32 stream (autocast) gets a new float32 sum, and so does a branch autograd needs."""
    x, branch = torch.randn(3, 5), torch.randn(3, 5)
    expected = x + branch
    with torch.no_grad():
        out = vmamba.add_residual(x, branch)
        assert out is branch and torch.equal(out, expected)
        low = torch.randn(3, 5).to(torch.bfloat16)
        out = vmamba.add_residual(x, low)
        assert out.dtype == torch.float32 and torch.equal(out, x + low.float())
    tracked = torch.randn(3, 5, requires_grad=True) * 1
    out = vmamba.add_residual(x, tracked)
    assert out is not tracked and torch.equal(out, x + tracked)
