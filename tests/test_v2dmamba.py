"""2DVMamba: parity with the official code (github AtlasAnalyticsLab/2DMamba @ 9fe12aa) from the fixture it generated
(`tests/data/official_v2dmamba_parity.pt`, see tests/data/README.md), official parameter counts, the official
training checkpoint layout, the OpenMMLab backbone and errors. The timm contract shared by all models is in
test_model_contract.py / test_timm_suite.py."""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import v2dmamba, vmamba
from vision2d.models.vmamba import released_checkpoint_globals
from parity_helpers import rel_err, save  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_v2dmamba_parity.pt"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"v2dmamba_tiny": 30_249_064, "v2dmamba_small": 50_147_752}  # docs/specs/v2dmamba.md
OFFICIAL_DROP_PATH = {"v2dmamba_tiny": 0.2, "v2dmamba_small": 0.3}
FIXTURE_MODEL = dict(dims=(8, 16, 32, 64))  # test_v2dmamba with these arguments: the fixture's model


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def official(fixture):
    """The official state dict in fp32."""
    return {k: v.float() for k, v in fixture["state_dict"].items()}


def create(path: str):
    """The fixture's model through timm's pretrained-file path."""
    return timm.create_model("test_v2dmamba", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                             **FIXTURE_MODEL).eval()


def assert_matches_fixture(model, fixture):
    for case in fixture["cases"]:
        x = case["input"].float()
        with torch.no_grad():
            logits = model(x)
            stages = model.forward_intermediates(x, intermediates_only=True)
        size = tuple(x.shape[2:])
        err = rel_err(logits, case["logits"])
        assert err < REL_TOL, f"logits differ from the official ones at {size}: rel err {err:.3g}"
        assert len(stages) == len(case["stages"])
        for i, (ours, theirs) in enumerate(zip(stages, case["stages"])):
            assert ours.shape == theirs.shape, f"stage {i} at {size}: {tuple(ours.shape)} vs {tuple(theirs.shape)}"
            err = rel_err(ours, theirs)
            assert err < REL_TOL, f"stage {i} differs from the official one at {size}: rel err {err:.3g}"


def test_fixture_model_is_test_v2dmamba(fixture):
    model = timm.create_model("test_v2dmamba", **FIXTURE_MODEL)
    assert sum(p.numel() for p in model.parameters()) == fixture["test_param_count"]
    assert fixture["official_config"]["use_v2d"] and fixture["official_config"]["forward_type"] == "v05_noz"


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_official_parity(fixture, official, tmp_path, backend, monkeypatch):
    """Logits and every stage output at 224x224 and 72x104 (non-square at every stage, so the transposed grids of
    directions 1 and 3 are not squares) from an official training checkpoint through timm's pretrained-file path."""
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", backend)
    if backend == "reference":
        fixture = dict(fixture, cases=fixture["cases"][1:])  # the slow reference at the small size only
    assert_matches_fixture(create(save({"model": official}, tmp_path / "ckpt.pth")), fixture)


def test_fixture_discriminates_the_2d_scan(fixture, official, tmp_path):
    """VMamba's 1D scan along the same four orders (the official code's silent fallback) breaks parity, so the test
    above checks the 2D scan."""
    model = create(save(official, tmp_path / "raw.pth"))
    for module in model.modules():
        if hasattr(module, "scan"):
            module.scan = "cross"
    case = fixture["cases"][1]
    with torch.no_grad():
        assert rel_err(model(case["input"].float()), case["logits"]) > 1e-2


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_and_drop_path_equal_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert isinstance(model, v2dmamba.V2DMamba)
    assert all(m.scan == "2pass" for m in model.modules() if hasattr(m, "scan"))
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(OFFICIAL_DROP_PATH[name])


def training_checkpoint(official: dict, use_v2d: bool = True) -> dict:
    """The official main.py's save: live and EMA weights (the live ones zeroed here, so a wrong pick shows),
    optimizer, scheduler, scaler, epoch and the training config (a yacs CfgNode there, which loads as nested
    mappings: test_vmamba covers the unpickling; VMamba's own configs have no USE_V2D)."""
    vssm = {"EMBED_DIM": 8, "USE_V2D": True} if use_v2d else {"EMBED_DIM": 8}
    return {"model": {k: torch.zeros_like(v) for k, v in official.items()}, "model_ema": dict(official),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
            "lr_scheduler": {"t_initial": 300}, "max_accuracy": 0.0, "scaler": {"scale": 65536.0}, "epoch": 299,
            "config": {"MODEL": {"TYPE": "vssm", "VSSM": vssm}}, "max_accuracy_ema": 0.0}


def test_training_checkpoint_loads_its_ema_weights(fixture, official, tmp_path):
    path = save(training_checkpoint(official), tmp_path / "ckpt_epoch_299.pth")
    with torch.serialization.safe_globals(released_checkpoint_globals()):
        torch.load(path, weights_only=True)  # weights-only loadable
    assert_matches_fixture(create(path), dict(fixture, cases=fixture["cases"][1:]))
    live = v2dmamba.checkpoint_filter_fn({"model": training_checkpoint(official)["model"]},
                                         timm.create_model("test_v2dmamba", **FIXTURE_MODEL))
    assert not any(v.any() for k, v in live.items() if k.startswith("stages.0.blocks.0.mixer"))


def test_training_config_tells_2dvmamba_from_vmamba(official):
    """Weights alone fit VMamba as well (same keys and shapes); the saved training config decides."""
    with pytest.raises(ValueError, match=r"is a VMamba \(no MODEL.VSSM.USE_V2D\) one.*create a vmamba_\* model"):
        v2dmamba.checkpoint_filter_fn(training_checkpoint(official, use_v2d=False),
                                      timm.create_model("test_v2dmamba", **FIXTURE_MODEL))
    vmamba_model = timm.create_model("test_vmamba", dims=(8, 16, 32, 64), ssm_ratio=1.0)
    with pytest.raises(ValueError, match=r"is a 2DVMamba \(MODEL.VSSM.USE_V2D set\) one.*create a v2dmamba_\* model"):
        vmamba.checkpoint_filter_fn(training_checkpoint(official), vmamba_model)
    vmamba.checkpoint_filter_fn(training_checkpoint(official, use_v2d=False), vmamba_model)


def test_checkpoint_of_another_size_is_rejected_with_key_report():
    with torch.device("meta"):
        tiny, small = timm.create_model("v2dmamba_tiny"), timm.create_model("v2dmamba_small")
    with pytest.raises(ValueError, match=r"does not match this V2DMamba.*missing \(126\): stages\.2\.blocks\.10\."):
        v2dmamba.checkpoint_filter_fn({"model": tiny.state_dict()}, small)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (33, 17)])
def test_any_size_forward_backward(size):
    model = timm.create_model("test_v2dmamba", num_classes=5)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="V2DMamba always scans with '2pass', got ssm_scan='cross'"):
        v2dmamba.V2DMamba(ssm_scan="cross")
    with pytest.raises(ValueError, match="unknown scan 'zigzag'"):
        timm.create_model("test_vmamba", ssm_scan="zigzag")
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        timm.create_model("test_v2dmamba")(torch.randn(1, 1, 32, 32))


def test_mm_backbone_from_a_training_checkpoint(tmp_path):
    """V2DMambaBackbone (the official MM_VSSM: every returned stage through a LayerNorm, which a classifier checkpoint
    starts at weight 1, bias 0) loads the EMA weights of an official training checkpoint through init_cfg."""
    pytest.importorskip("mmseg", reason="mmseg is not installed: run python tools/install_openmmlab.py")
    from mmengine.registry import MODELS

    import vision2d.mm  # noqa: F401  (registers V2DMambaBackbone)

    torch.manual_seed(0)
    classifier = timm.create_model("test_v2dmamba").eval()
    path = save(training_checkpoint(classifier.state_dict()), tmp_path / "ckpt_epoch_299.pth")
    backbone = MODELS.build(dict(type="V2DMambaBackbone", arch="test",
                                 init_cfg=dict(type="Pretrained", checkpoint=path)))
    backbone.init_weights()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        features = backbone.eval()(x)
        stages = classifier.forward_intermediates(x, intermediates_only=True)
    for i, (ours, stage) in enumerate(zip(features, stages)):
        expected = F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2], eps=1e-5).permute(0, 3, 1, 2)
        assert rel_err(ours, expected) < REL_TOL, f"feature {i}"
