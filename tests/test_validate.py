"""tools/validate.py and the shipped digits checkpoint: loading through timm's pretrained path, reproducing the
recorded accuracy, and clear errors for weights that do not fit."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import vision2d  # noqa: F401  (registers the models with timm)
from vision2d.checkpoint import CheckpointError, create_model_from_weights
from vision2d.train.data import build_digits_image_folder

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "test_mamba2d_digits.safetensors"
SHIPPED_INFO = json.loads((REPO / "checkpoints" / "test_mamba2d_digits.json").read_text())


def load_validate():
    spec = importlib.util.spec_from_file_location("tool_validate", REPO / "tools" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.validate


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    return build_digits_image_folder(tmp_path_factory.mktemp("digits"))


def test_shipped_checkpoint_is_the_recorded_file():
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == SHIPPED_INFO["sha256"]
    assert SHIPPED.stat().st_size < 4 * 2 ** 20


def test_shipped_checkpoint_loads_through_timms_pretrained_path():
    model = timm.create_model("test_mamba2d", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(SHIPPED), num_classes=10)).eval()
    from_metadata = create_model_from_weights(SHIPPED).eval()
    expected = safetensors.torch.load_file(SHIPPED)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert from_metadata.pretrained_cfg["input_size"] == (3, 32, 32)  # the data config stored in the file
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), from_metadata(images))


def test_validate_reproduces_the_recorded_accuracy(digits_dir):
    metrics = load_validate()(["--checkpoint", str(SHIPPED), "--data-dir", str(digits_dir), "--batch-size", "32",
                               "--workers", "0"])
    assert metrics["top1"] == pytest.approx(SHIPPED_INFO["val"]["top1"], abs=1e-4)
    assert metrics["top5"] == pytest.approx(SHIPPED_INFO["val"]["top5"], abs=1e-4)
    assert metrics["loss"] == pytest.approx(SHIPPED_INFO["val"]["loss"], abs=1e-5)


def test_validate_rejects_weights_for_another_class_count(digits_dir, tmp_path):
    shutil.copytree(digits_dir / "val", tmp_path / "val", ignore=shutil.ignore_patterns("9"))
    with pytest.raises(ValueError, match="classify 10 classes, but .* has 9 class folders"):
        load_validate()(["--checkpoint", str(SHIPPED), "--data-dir", str(tmp_path), "--workers", "0"])


def test_weights_without_vision2d_metadata_need_a_model_name(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(SHIPPED), plain)
    with pytest.raises(CheckpointError, match="not a vision2d weight file, so the model name must be given"):
        create_model_from_weights(plain)
    model = create_model_from_weights(plain, "test_mamba2d", num_classes=10)
    assert torch.equal(model.head.fc.weight, safetensors.torch.load_file(SHIPPED)["head.fc.weight"])
