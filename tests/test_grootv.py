"""GrootV: parity with the official code (github EasonXiao-888/GrootVL @ 0857f0a) from a fixture it generated,
official parameter counts, checkpoint layouts and errors. The timm contract shared by all models is in
test_model_contract.py / test_timm_suite.py; the tree scan op is tested in test_tree_scan.py.

`tests/data/official_grootv_parity.pt` holds an official-format checkpoint (`{"model": state_dict}`) of a small
official GrootV (the `test_grootv` architecture) with perturbed random weights, a 224x224 and a non-square input
batch, and the official logits and stage outputs; `tests/data/README.md` says how it was made.
"""
from pathlib import Path

import pytest
import timm
import torch

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import grootv

FIXTURE = Path(__file__).parent / "data" / "official_grootv_parity.pt"
OFFICIAL_COMMIT = "0857f0a12f6e46873d05e4b9a73d987e97b149c3"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"grootv_tiny": 29_958_600, "grootv_small": 51_331_624, "grootv_base": 90_597_096}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _create(path: str, **kwargs):
    return timm.create_model("test_grootv", pretrained=True, pretrained_cfg_overlay=dict(file=path), **kwargs).eval()


def test_fixture_is_small_and_official(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == OFFICIAL_COMMIT and fixture["model"] == "test_grootv"
    assert fixture["official_param_counts"] == OFFICIAL_PARAMS
    sizes = [tuple(case["input"].shape[-2:]) for case in fixture["cases"]]
    assert (224, 224) in sizes and any(h != w for h, w in sizes)


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    model = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert model.feature_info[-1]["reduction"] == 32


def test_official_checkpoint_reproduces_official_outputs(fixture, tmp_path):
    """Logits and every stage output at 224x224 and a non-square size, through timm's pretrained-file path."""
    model = _create(_save(fixture["checkpoint"], tmp_path / "official.pth"))
    assert sum(v.numel() for v in model.parameters()) == sum(
        v.numel() for k, v in fixture["checkpoint"]["model"].items() if "running_" not in k and "num_batches" not in k)
    for case in fixture["cases"]:
        x = case["input"].float()
        with torch.no_grad():
            final, stages = model.forward_intermediates(x)
            logits = model.forward_head(final)
        assert rel_err(logits, case["logits"]) < REL_TOL, tuple(x.shape)
        assert len(stages) == len(case["stages"])
        for i, (ours, official) in enumerate(zip(stages, case["stages"])):
            assert ours.shape == official.shape and rel_err(ours, official) < REL_TOL, (tuple(x.shape), i)


@pytest.mark.parametrize("layout", ["model_and_ema", "raw", "module_prefix", "full_training_state"])
def test_official_checkpoint_layouts(fixture, tmp_path, layout):
    """With both `model` and `model_ema` in a file, the EMA weights are loaded (as timm's loader picks them)."""
    sd = fixture["checkpoint"]["model"]
    obj = {"model_and_ema": {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "model_ema": sd},
           "raw": dict(sd),
           "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}},
           "full_training_state": {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299,
                                   "max_accuracy": 83.4, "lr_scheduler": {}}}[layout]
    model = _create(_save(obj, tmp_path / f"{layout}.pth"))
    reference = grootv.checkpoint_filter_fn({"model": sd}, model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_model_runs_on_every_backend_alike(fixture):
    model = timm.create_model("test_grootv").eval()
    model.load_state_dict(grootv.checkpoint_filter_fn(fixture["checkpoint"], model))
    x = fixture["cases"][1]["input"][:1, :, :40, :56].float()
    outputs = {}
    for backend in ("reference", "cpu"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("VISION2D_SCAN_BACKEND", backend)
            with torch.no_grad():
                outputs[backend] = model(x)
    assert rel_err(outputs["cpu"], outputs["reference"]) < 1e-5


def test_tree_follows_the_features_not_the_batch_neighbours(fixture):
    """Each image gets its own tree: a batch gives the outputs of its images run alone."""
    model = timm.create_model("test_grootv").eval()
    model.load_state_dict(grootv.checkpoint_filter_fn(fixture["checkpoint"], model))
    x = fixture["cases"][1]["input"].float()
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
    assert rel_err(together, alone) < 1e-5


def test_train_step_and_bf16_autocast():
    torch.manual_seed(0)
    model = timm.create_model("test_grootv", num_classes=4, drop_path_rate=0.1)
    x = torch.randn(2, 3, 48, 40)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    ssm = "stages.0.blocks.0.mixer."
    assert all(grads[ssm + n].abs().sum() > 0 for n in ("A_log", "dt_proj.weight", "x_proj.weight", "conv2d.weight"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_checkpoint_of_another_variant_fails_with_key_report(fixture, tmp_path):
    sd = dict(fixture["checkpoint"]["model"])
    del sd["levels.2.blocks.1.TreeSSM.A_logs"]
    with pytest.raises(ValueError, match=r"missing \(1\): stages\.2\.blocks\.1\.mixer\.A_log"):
        _create(_save({"model": sd}, tmp_path / "broken.pth"))
    with pytest.raises(ValueError, match="checkpoint does not match this GrootV"):
        timm.create_model("grootv_tiny", pretrained=True, device="meta",
                          pretrained_cfg_overlay=dict(file=_save(fixture["checkpoint"], tmp_path / "small.pth")))


def test_bad_input_errors():
    model = timm.create_model("test_grootv")
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="built for 3 input channels"):
        model(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="global_pool='avg'"):
        model.reset_classifier(10, global_pool="max")
