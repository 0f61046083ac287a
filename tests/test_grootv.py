"""GrootV: parity with the official code (github EasonXiao-888/GrootVL @ 0857f0a) from a fixture it generated,
official parameter counts, checkpoint layouts and errors. The timm contract shared by all models is in
test_model_contract.py / test_timm_suite.py; the tree scan op is tested in test_tree_scan.py.

`tests/data/official_grootv_parity.pt` holds an official-format checkpoint (`{"model": state_dict}`) of a small
official GrootV (the `test_grootv` architecture) with perturbed random weights, a 224x224 and a non-square input
batch, and the official logits and stage outputs; `tests/data/README.md` says how it was made.
"""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vision2d  # noqa: F401  (registers the models)
from vision2d.models import grootv
from parity_helpers import rel_err  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_grootv_parity.pt"
OFFICIAL_COMMIT = "0857f0a12f6e46873d05e4b9a73d987e97b149c3"
REL_TOL = 1e-4
OFFICIAL_PARAMS = {"grootv_tiny": 29_958_600, "grootv_small": 51_331_624, "grootv_base": 90_597_096}


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


@pytest.mark.parametrize("layout", ["model_and_ema", "raw", "module_prefix", "released"])
def test_official_checkpoint_layouts(fixture, tmp_path, layout, monkeypatch):
    """With both `model` and `model_ema` in a file, the EMA weights are loaded (as timm's loader picks them). The
    released layout (optimizer, scheduler, a pickled yacs config) loads through timm's path without yacs."""
    sd = fixture["checkpoint"]["model"]
    if layout == "released":
        from test_vmamba import released_layout
        obj = released_layout(sd, monkeypatch)
    else:
        obj = {"model_and_ema": {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "model_ema": sd},
               "raw": dict(sd),
               "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}}}[layout]
    path = _save(obj, tmp_path / f"{layout}.pth")
    if layout == "released":
        monkeypatch.delitem(sys.modules, "yacs.config")
        monkeypatch.delitem(sys.modules, "yacs")
    model = _create(path)
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


def test_float64_model_matches_float32(fixture):
    model = timm.create_model("test_grootv").eval()
    model.load_state_dict(grootv.checkpoint_filter_fn(fixture["checkpoint"], model))
    x = fixture["cases"][1]["input"][:1].float()
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
    assert out64.dtype == torch.float64 and rel_err(out32, out64) < 1e-5


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
    with pytest.raises(ValueError, match="global_pool 'avg' or ''"):
        model.reset_classifier(10, global_pool="max")
    model.reset_classifier(0, "")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, model.head_hidden_size, 2, 2)
    model.reset_classifier(10)  # no pooling: the classifier at every pixel
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10, 2, 2)


def test_convert_checkpoint_infers_grootv_from_a_released_file(fixture, tmp_path, monkeypatch, capsys):
    """The official save_checkpoint layout (live and EMA weights, optimizer, scheduler, a pickled yacs config)
    converts without --model and without yacs installed; the EMA weights are converted."""
    from test_vmamba import _convert_checkpoint_tool, released_layout
    path = _save(released_layout(fixture["checkpoint"]["model"], monkeypatch), tmp_path / "grootv_t_1k_224.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    out = tmp_path / "test_grootv.safetensors"
    assert _convert_checkpoint_tool().main([path, str(out)]) == 0, capsys.readouterr().err
    assert "test_grootv, 1000 classes" in capsys.readouterr().out
    case = fixture["cases"][1]
    with torch.no_grad():
        assert rel_err(_create(str(out))(case["input"].float()), case["logits"]) < REL_TOL


@pytest.mark.parametrize("variant, drop_path", [("tiny", 0.1), ("small", 0.3), ("base", 0.5)])
def test_train_configs_hold_the_official_recipe(variant, drop_path, tmp_path):
    from vision2d.train.config import parse_args
    args = parse_args(["--config", str(Path(__file__).parents[1] / f"configs/train/grootv_{variant}.yaml"),
                       "--data-dir", str(tmp_path)])
    assert args.model == f"grootv_{variant}" and (args.drop_path, args.drop_rate) == (drop_path, 0.0)
    assert (args.opt, args.lr_base, args.lr_base_size, args.batch_size * args.grad_accum_steps) == \
           ("adamw", 5e-4, 512, 1024)
    assert (args.weight_decay, args.clip_grad, args.epochs, args.warmup_epochs, args.sched) == \
           (0.05, 5.0, 300, 20, "cosine")
    assert (args.warmup_lr, args.min_lr, args.model_ema, args.model_ema_decay) == (1e-6, 1e-5, True, 0.9999)
    assert (args.aa, args.mixup, args.cutmix, args.smoothing, args.reprob) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1,
                                                                               0.25)
