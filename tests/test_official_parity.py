"""Parity with the official Mamba2D code (github cocoalex00/Mamba2D @ 9acb361), from a fixture it generated.

`tests/data/official_mamba2d_parity.pt` holds an official-format (Lightning) checkpoint of a small official model
(the `test_mamba2d` architecture) with perturbed random weights, two input batches, and the official logits and stage
outputs for them; `tests/data/README.md` says how it was made. Our model loads the checkpoint through timm's
pretrained-file path (so through `checkpoint_filter_fn`) and must reproduce the official outputs in fp32.
"""
import os
from pathlib import Path

import pytest
import timm
import torch

import vision2d  # noqa: F401  (registers the models)
from vision2d.ops import resolve_backend
from parity_helpers import rel_err  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "official_mamba2d_parity.pt"
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _official_checkpoint(fixture, tmp_path: Path, layout: str = "lightning") -> str:
    """The fixture's official checkpoint written to a file in one of the layouts official weights come in."""
    checkpoint = fixture["checkpoint"]
    sd = checkpoint["state_dict"]
    if layout == "lightning":
        obj = checkpoint
    elif layout == "raw":
        obj = dict(sd)
    elif layout == "model":
        obj = {"model": dict(sd), "epoch": 1}
    elif layout == "model_ema":  # EMA weights win over the live ones (zeroed here, so a wrong pick shows)
        obj = {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "model_ema": dict(sd)}
    elif layout == "module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    elif layout == "orig_mod_prefix":
        obj = {"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}
    elif layout == "contiguous":  # official conv weights are channels_last; plain strides must work too
        obj = {"state_dict": {k: v.contiguous() for k, v in sd.items()}}
    else:
        raise ValueError(layout)
    return _save(obj, tmp_path / f"official_{layout}.ckpt")


def _create(fixture, path: str):
    model = timm.create_model(fixture["model"], pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              **fixture["model_kwargs"])
    return model.eval()


def _assert_parity(model, fixture, tol=REL_TOL):
    for case in fixture["cases"]:
        x = case["input"]
        with torch.no_grad():
            logits = model(x)
            stages = model.forward_intermediates(x, intermediates_only=True)
        size = tuple(x.shape)
        assert logits.dtype == torch.float32
        err = rel_err(logits, case["logits"])
        assert err < tol, f"logits differ from the official ones for input {size}: rel err {err:.3g}"
        assert len(stages) == len(case["stages"])
        for i, (ours, official) in enumerate(zip(stages, case["stages"])):
            assert ours.shape == official.shape, f"stage {i} shape {tuple(ours.shape)} vs {tuple(official.shape)}"
            err = rel_err(ours, official)
            assert err < tol, f"stage {i} output differs from the official one for input {size}: rel err {err:.3g}"


def test_fixture_is_small_and_official_format(fixture):
    assert FIXTURE.stat().st_size < 2 * 1024 * 1024
    assert fixture["official_commit"] == "9acb361c74dd3f95f984989a836681ffe94a3c27"
    keys = fixture["checkpoint"]["state_dict"].keys()
    assert all(k.startswith(("backbone.", "head.", "norm.")) for k in keys)
    assert "backbone.stages.2.1.weight" in keys  # stage post-norm at index depth
    stem = fixture["checkpoint"]["state_dict"]["backbone.ds.stem.conv.weight"]
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()


@pytest.mark.parametrize("backend", ["reference", "default"])
def test_official_parity(fixture, tmp_path, monkeypatch, backend):
    if backend == "reference":
        monkeypatch.setenv("VISION2D_SCAN_BACKEND", "reference")
    else:
        monkeypatch.delenv("VISION2D_SCAN_BACKEND", raising=False)
    resolved = resolve_backend("cpu")
    assert resolved == "reference" or backend == "default"
    model = _create(fixture, _official_checkpoint(fixture, tmp_path))
    _assert_parity(model, fixture)


@pytest.mark.parametrize("layout", ["raw", "model", "model_ema", "module_prefix", "orig_mod_prefix", "contiguous"])
def test_official_layouts_load_the_same_weights(fixture, tmp_path, layout):
    expected = _create(fixture, _official_checkpoint(fixture, tmp_path)).state_dict()
    loaded = _create(fixture, _official_checkpoint(fixture, tmp_path, layout)).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), f"{layout}: {key} differs"


def test_fixture_discriminates_direction_swap(fixture, tmp_path, monkeypatch):
    """Swapping the T and L parameters of the scan must break parity, so the test above has teeth."""
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "reference")
    sd = dict(fixture["checkpoint"]["state_dict"])
    for key in [k for k in sd if ".token_mixer.dt_projT." in k or k.endswith(".token_mixer.AT_log")]:
        other = key.replace("dt_projT", "dt_projL").replace("AT_log", "AL_log")
        sd[key], sd[other] = sd[other], sd[key]
    model = _create(fixture, _save({"state_dict": sd}, tmp_path / "swapped.ckpt"))
    x = fixture["cases"][0]["input"]
    with torch.no_grad():
        stage0 = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert rel_err(stage0, fixture["cases"][0]["stages"][0]) > 1e-2
