"""MSVMamba: parity with the official v1 code (github YuHengsss/MSVMamba @ c394019) from a fixture it generated, the
multi-scale scan order, official parameter counts, checkpoint layouts and errors. The timm contract shared by all
models is in test_model_contract.py.

`tests/data/official_msvmamba_parity.pt` holds a small official VSSM (the published `ms_vssm` arguments with dims 8,
depths 1-1-2-1) with perturbed random weights, its state dict, inputs (224x224 and 96x136: odd low-resolution maps at
every stage), and the official logits and stage outputs; `tests/data/README.md` says how it was made.
"""
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from test_vmamba import _convert_checkpoint_tool, _fake_yacs_module
from vision2d.models import msvmamba
from vision2d.ops.scan_orders import multiscale_scan_order
from parity_helpers import rel_err, save  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_msvmamba_parity.pt"
OFFICIAL_COMMIT = "c39401918e94f11eb29e4932b901b3fd139f1377"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"msvmamba_nano": 6_864_136, "msvmamba_micro": 11_879_272, "msvmamba_tiny": 33_046_312}


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def official_state_dict(fixture) -> dict:
    return {k: v.float() for k, v in fixture["state_dict"].items()}


def create(path: str, **kwargs):
    return timm.create_model("test_msvmamba", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **kwargs).eval()


def run(model, x):
    """(logits, stage outputs) from one pass."""
    with torch.no_grad():
        features, stages = model.forward_intermediates(x)
        return model.forward_head(features), stages


def test_fixture_matches_the_test_model(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT
    config = fixture["official_config"]
    assert (config["dims"], config["depths"], config["sscore_type"]) == (8, [1, 1, 2, 1], "multiscale_4scan_12")
    model = timm.create_model("test_msvmamba")
    assert sum(p.numel() for p in model.parameters()) == fixture["test_param_count"]
    assert fixture["official_param_counts"] == {k.split("_")[1]: v for k, v in OFFICIAL_PARAMS.items()}


def test_official_parity(fixture, tmp_path):
    model = create(save({"model": official_state_dict(fixture)}, tmp_path / "official.pth"))
    for case in fixture["cases"]:
        x = case["input"].float()
        logits, stages = run(model, x)
        size = tuple(x.shape)
        err = rel_err(logits, case["logits"])
        assert err < REL_TOL, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
        assert len(stages) == len(case["stages"])
        for i, (ours, official) in enumerate(zip(stages, case["stages"])):
            assert ours.shape == official.shape, f"stage {i}: {tuple(ours.shape)} vs {tuple(official.shape)}"
            err = rel_err(ours, official)
            assert err < REL_TOL, f"stage {i} differs from the official one for input {size}: rel err {err:.3g}"


def test_fixture_discriminates_the_carried_state(fixture, tmp_path, monkeypatch):
    """Scanning the three low-resolution segments as separate sequences (state restarted per segment) must break
    parity, so the parity test has teeth for the state carried across segments."""
    model = create(save(official_state_dict(fixture), tmp_path / "raw.pth"))
    scan = msvmamba.MultiScaleSS2D._scan

    def restarting(self, u, parameters, order=None):
        if order is None:
            return scan(self, u, parameters)
        length = u.shape[1]  # each segment visits one copy of u: scan the segments one by one
        orders = order.view(-1, length)
        return torch.cat([scan(self, u, parameters, (segment - c * length)[None]) for c, segment in enumerate(orders)],
                         dim=1)

    monkeypatch.setattr(msvmamba.MultiScaleSS2D, "_scan", restarting)
    case = fixture["cases"][0]
    logits, _ = run(model, case["input"].float())
    assert rel_err(logits, case["logits"]) > 1e-3


def test_multiscale_scan_order():
    order = multiscale_scan_order(2, 3)
    assert order.tolist() == [[5, 4, 3, 2, 1, 0, 6, 9, 7, 10, 8, 11, 17, 14, 16, 13, 15, 12]]
    assert torch.equal(multiscale_scan_order(5, 4)[0].sort().values, torch.arange(60))
    with pytest.raises(ValueError, match="H and W must be >= 0"):
        multiscale_scan_order(-1, 3)


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for s in model.stages
             for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)


@pytest.mark.parametrize("layout", ["raw", "training", "model_only", "module_prefix"])
def test_official_layouts_load_the_same_weights(fixture, tmp_path, layout, monkeypatch):
    sd = official_state_dict(fixture)
    expected = create(save(sd, tmp_path / "raw.pth")).state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    if layout == "training":  # VMamba's main.py layout: `model_ema` wins over `model` (zeroed here: a wrong pick shows)
        cfg_module = _fake_yacs_module()
        monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
        monkeypatch.setitem(sys.modules, "yacs.config", cfg_module)
        config = cfg_module.CfgNode({"MODEL": cfg_module.CfgNode({"TYPE": "vssm"})})
        obj = {"model": zeros, "model_ema": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
               "config": config, "max_accuracy": 82.8, "max_accuracy_ema": 82.7}
    else:
        obj = {"raw": sd, "model_only": {"model": sd, "epoch": 3},
               "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[layout]
    path = save(obj, tmp_path / f"{layout}.pth")
    monkeypatch.delitem(sys.modules, "yacs.config", raising=False)  # loading must not need yacs
    monkeypatch.delitem(sys.modules, "yacs", raising=False)
    loaded = create(path).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_official_mm_checkpoint_loads_with_its_output_norms(fixture, tmp_path):
    """The backbone part of an official Mask R-CNN / UperNet checkpoint (Backbone_VSSM: outnorm{i}, no classifier)
    loads into the model with feature_norms; its features are the official stage outputs through those norms."""
    generator = torch.Generator().manual_seed(0)
    dims = [s.shape[1] for s in fixture["cases"][0]["stages"]]
    backbone = {f"backbone.{k}": v for k, v in official_state_dict(fixture).items() if not k.startswith("classifier.")}
    norms = {}
    for i, dim in enumerate(dims):
        norms[i] = (1 + 0.2 * torch.randn(dim, generator=generator), 0.1 * torch.randn(dim, generator=generator))
        backbone[f"backbone.outnorm{i}.weight"], backbone[f"backbone.outnorm{i}.bias"] = norms[i]
    checkpoint = {"meta": {"iter": 160000}, "state_dict": {**backbone, "decode_head.conv_seg.weight": torch.zeros(1),
                                                           "auxiliary_head.conv_seg.weight": torch.zeros(1)}}
    model = timm.create_model("test_msvmamba", feature_norms=True).eval()
    state_dict = msvmamba.checkpoint_filter_fn(checkpoint, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)
    case = fixture["cases"][1]
    with torch.no_grad():
        features = model.forward_intermediates(case["input"].float(), intermediates_only=True)
    for i, (ours, official) in enumerate(zip(features, case["stages"])):
        expected = F.layer_norm(official.permute(0, 2, 3, 1), (dims[i],), *norms[i], eps=1e-5).permute(0, 3, 1, 2)
        assert rel_err(ours, expected) < REL_TOL, f"feature {i}"


def test_checkpoint_of_another_variant_is_rejected_with_key_report():
    with torch.device("meta"):
        nano, micro = timm.create_model("msvmamba_nano"), timm.create_model("msvmamba_micro")
    with pytest.raises(ValueError, match=r"mis-shaped \(265\): .*stages\.0\.blocks\.0\.ffn\.fc1\.weight: checkpoint "
                                         r"\(96, 48\) vs model \(128, 64\)"):
        msvmamba.checkpoint_filter_fn({"model": nano.state_dict()}, micro)


@pytest.mark.parametrize("size", [(4, 4), (61, 37)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_msvmamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_input_errors():
    model = timm.create_model("test_msvmamba")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"H and W >= 4 pixels .* got \(32, 2\)"):
        model(torch.randn(1, 3, 32, 2))
    with pytest.raises(ValueError, match="depths .* and dims .* must have the same length"):
        timm.create_model("test_msvmamba", dims=(8, 16))


@pytest.mark.parametrize("size", ["nano", "micro", "tiny"])
def test_train_configs_hold_the_official_recipe(size, tmp_path):
    from vision2d.train.config import parse_args

    config = Path(__file__).parents[1] / "configs" / "train" / f"msvmamba_{size}.yaml"
    args = parse_args(["--config", str(config), "--data-dir", str(tmp_path)])
    assert (args.model, args.drop_path, args.lr_base, args.lr_base_size, args.weight_decay, args.clip_grad,
            args.model_ema, args.model_ema_decay, args.epochs, args.warmup_epochs) == \
        (f"msvmamba_{size}", 0.2, 5e-4, 512, 0.05, 5.0, True, 0.9999, 300, 20)


def test_convert_checkpoint_infers_msvmamba_from_a_training_file(fixture, tmp_path, capsys):
    tool = _convert_checkpoint_tool()
    path = save({"model": official_state_dict(fixture), "epoch": 299}, tmp_path / "vssm_test_ms.pth")
    out = tmp_path / "test_msvmamba.safetensors"
    assert tool.main([path, str(out)]) == 0, capsys.readouterr().err
    assert "test_msvmamba, 1000 classes" in capsys.readouterr().out
    converted = timm.create_model("test_msvmamba", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    case = fixture["cases"][1]
    logits, _ = run(converted.eval(), case["input"].float())
    assert rel_err(logits, case["logits"]) < REL_TOL
