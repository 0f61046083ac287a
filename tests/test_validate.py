"""tools/validate.py and the shipped digits checkpoint: loading through timm's pretrained path, reproducing the
recorded accuracy, and clear errors for weights that do not fit."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import safetensors
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


def write_with_metadata(path: Path, **changes) -> Path:
    """The shipped weights saved again with some metadata fields changed (None: removed)."""
    with safetensors.safe_open(SHIPPED, framework="pt") as weights:
        metadata = dict(weights.metadata())
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    safetensors.torch.save_file(safetensors.torch.load_file(SHIPPED), path, metadata=metadata)
    return path


DATA_CONFIG = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "crop_mode": "center"}


@pytest.mark.parametrize("field, value, message", [
    ("file", "/etc/passwd", "data_config.file is not a data config entry"),
    ("url", "https://example.com/other.pth", "data_config.url is not a data config entry"),
    ("hf_hub_id", "someone/else", "data_config.hf_hub_id is not a data config entry"),
    ("input_size", [3, 100000, 100000], "data_config.input_size must be"),
    ("input_size", [3, 32], "data_config.input_size must be"),
    ("input_size", "224", "data_config.input_size must be"),
    ("interpolation", "exec", "data_config.interpolation must be one of"),
    ("mean", [0.5, 0.5], "data_config.mean must be 3 finite numbers"),
    ("std", [0.2, 0.0, 0.2], "data_config.std must be 3 finite numbers .* each > 0"),
    ("crop_pct", 50, r"data_config.crop_pct must be a number in \(0, 1\]"),
    ("crop_mode", ["center"], "data_config.crop_mode must be one of"),
])
def test_weight_metadata_is_data_not_instructions(tmp_path, field, value, message):
    bad = write_with_metadata(tmp_path / "bad.safetensors", data_config={**DATA_CONFIG, field: value})
    with pytest.raises(CheckpointError, match=rf"weight file {re.escape(str(bad))}: metadata field {message}"):
        create_model_from_weights(bad)


@pytest.mark.parametrize("changes, message", [
    (dict(num_classes="2000000000"), "num_classes must be a whole number from 0 to 100000"),
    (dict(num_classes="ten"), "num_classes must be a whole number"),
    (dict(model="os.system"), "model must name a registered timm model"),
    (dict(model=None), "model must name a registered timm model"),
    (dict(data_config="[1, 2]"), "data_config must be a JSON object"),
    (dict(data_config="{not json"), "data_config is not JSON"),
])
def test_bad_weight_metadata_names_the_file_and_field(tmp_path, changes, message):
    bad = write_with_metadata(tmp_path / "bad.safetensors", **changes)
    with pytest.raises(CheckpointError, match=rf"weight file {re.escape(str(bad))}: metadata field {message}"):
        create_model_from_weights(bad)


def test_documented_metadata_still_applies(tmp_path):
    good = write_with_metadata(tmp_path / "good.safetensors",
                               data_config={**DATA_CONFIG, "input_size": [3, 40, 48], "crop_pct": 0.9})
    cfg = create_model_from_weights(good).pretrained_cfg
    assert (cfg["input_size"], cfg["crop_pct"], cfg["file"]) == ((3, 40, 48), 0.9, str(good))


class WritesAMarker:
    """A pickle payload: unpickling it (without weights-only loading) would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("content, message", [
    ("zero-byte", r"weight file {path} is empty \(0 bytes\); expected a .safetensors or torch checkpoint file"),
    ("folder", r"weight file {path} is a folder; expected a .safetensors or torch checkpoint file \(it holds "),
    ("list", r"weight file {path} holds a list; expected a dict: a state dict of tensors"),
    ("text", r"weight file {path} is not a readable torch checkpoint: truncated, corrupt, or not written by "
             r"torch.save"),
    ("text-safetensors", r"weight file {path} is truncated or corrupt"),
    ("pickle", r"{path} holds Python objects that weights-only loading refuses \(.*Unsupported global.*\); .*If you "
               r"trust the file and its source, load it once yourself"),
])
def test_bad_weight_files_are_named_with_what_was_expected(digits_dir, tmp_path, content, message):
    path = tmp_path / ("weights.safetensors" if content == "text-safetensors" else "weights.pth")
    marker = tmp_path / "payload-ran"
    if content == "zero-byte":
        path.touch()
    elif content == "folder":
        path.mkdir()
        shutil.copy(SHIPPED, path / "model.safetensors")
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content.startswith("text"):
        path.write_text("these are not weights\n")
    else:
        torch.save({"state_dict": safetensors.torch.load_file(SHIPPED), "payload": WritesAMarker(marker)}, path)
    with pytest.raises(CheckpointError, match=message.format(path=re.escape(str(path)))):
        load_validate()(["--checkpoint", str(path), "--model", "test_mamba2d", "--data-dir", str(digits_dir),
                         "--workers", "0"])
    assert not marker.exists()
