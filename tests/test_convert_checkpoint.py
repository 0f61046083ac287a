"""tools/convert_checkpoint.py: official checkpoint (from the parity fixture) -> vision2d safetensors -> timm."""
import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import timm
import torch

import vision2d  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "official_mamba2d_parity.pt"
_spec = importlib.util.spec_from_file_location("convert_checkpoint", ROOT / "tools" / "convert_checkpoint.py")
convert_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_checkpoint)


def rel_err(actual, expected):
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture
def official_ckpt(fixture, tmp_path):
    path = tmp_path / "M2D-test.ckpt"
    torch.save(fixture["checkpoint"], path)
    return path


def run(capsys, *argv):
    code = convert_checkpoint.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_convert_official_to_safetensors_and_load_with_timm(fixture, official_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VISION2D_SCAN_BACKEND", "reference")
    out = tmp_path / "test_mamba2d.safetensors"
    code, stdout, stderr = run(capsys, official_ckpt, out)  # variant inferred from shapes
    assert code == 0, stderr
    assert "test_mamba2d" in stdout
    with safetensors.safe_open(out, framework="pt") as f:
        assert f.metadata() == {"format": "vision2d", "model": "test_mamba2d", "num_classes": "1000",
                                "source": "M2D-test.ckpt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind
    converted = timm.create_model("test_mamba2d", pretrained=True, pretrained_cfg_overlay=dict(file=str(out))).eval()
    direct = timm.create_model("test_mamba2d", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(official_ckpt))).eval()
    for key, value in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key
    for case in fixture["cases"]:
        with torch.no_grad():
            logits = converted(case["input"])
            stages = converted.forward_intermediates(case["input"], intermediates_only=True)
        assert rel_err(logits, case["logits"]) < 1e-4
        for ours, official in zip(stages, case["stages"]):
            assert rel_err(ours, official) < 1e-4


def test_explicit_model_and_alias(official_ckpt, tmp_path, capsys):
    for name in ("test_mamba2d",):
        code, _, stderr = run(capsys, official_ckpt, tmp_path / f"{name}.safetensors", "--model", name)
        assert code == 0, stderr
    assert convert_checkpoint.resolve_model_name("mamba2d_small") == "mamba2d_small"
    with pytest.raises(convert_checkpoint.ConversionError, match="'tiny' is ambiguous: .*mamba2d_tiny.*vmamba_tiny"):
        convert_checkpoint.resolve_model_name("tiny")  # several families have a tiny
    with pytest.raises(convert_checkpoint.ConversionError, match="unknown model 'huge'"):
        convert_checkpoint.resolve_model_name("huge")


def test_other_variant_is_a_clear_error(official_ckpt, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    code, _, stderr = run(capsys, official_ckpt, out, "--model", "mamba2d_tiny")
    assert code == 2
    for part in ("missing", "unexpected", "mis-shaped", "stages.0.blocks.0.mlp.fc1.weight: checkpoint (64, 16) vs "
                 "model (256, 64)", "looks like test_mamba2d"):
        assert part in stderr, stderr
    assert out.read_bytes() == b"previous"  # a failed conversion leaves the output untouched


def test_wrong_keys_are_listed(fixture, tmp_path, capsys):
    sd = dict(fixture["checkpoint"]["state_dict"])
    sd.pop("backbone.stages.0.1.token_mixer.D")
    sd["backbone.stages.0.1.token_mixer.E"] = torch.zeros(16)
    sd["backbone.stages.1.0.token_mixer.x_proj.weight"] = torch.zeros(36, 32)  # v1-like: 2R + 2N rows
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, path)
    code, _, stderr = run(capsys, path, tmp_path / "bad.safetensors")
    assert code == 2
    assert "missing (1): stages.0.blocks.1.token_mixer.D" in stderr, stderr
    assert "unexpected (1): stages.0.blocks.1.token_mixer.E" in stderr, stderr
    assert "stages.1.blocks.0.token_mixer.x_proj.weight: checkpoint (36, 32) vs model (52, 32)" in stderr, stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_variant_cannot_be_inferred(fixture, tmp_path, capsys):
    sd = dict(fixture["checkpoint"]["state_dict"])
    sd["backbone.ds.stem.conv.weight"] = torch.zeros(48, 3, 7, 7)
    torch.save({"state_dict": sd}, tmp_path / "w48.ckpt")
    code, _, stderr = run(capsys, tmp_path / "w48.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "fits no vision2d model" in stderr and "closest is test_mamba2d" in stderr, stderr
    assert "stem.conv.weight: checkpoint (48, 3, 7, 7) vs model (16, 3, 7, 7)" in stderr, stderr
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    code, _, stderr = run(capsys, tmp_path / "other.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "fits no vision2d model (its first keys: conv.weight)" in stderr, stderr


def test_unreadable_inputs(tmp_path, capsys):
    code, _, stderr = run(capsys, tmp_path / "nope.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "does not exist" in stderr
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "pickled.ckpt")
    code, _, stderr = run(capsys, tmp_path / "pickled.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "holds Python objects that weights-only loading refuses" in stderr, stderr
    assert "If you trust the file and its source" in stderr
    (tmp_path / "trunc.ckpt").write_bytes(b"PK\x03\x04garbage")
    code, _, stderr = run(capsys, tmp_path / "trunc.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "trunc.ckpt is not a readable torch checkpoint" in stderr, stderr
    code, _, stderr = run(capsys, tmp_path / "trunc.ckpt", tmp_path / "o.pt")
    assert code == 2 and ".safetensors" in stderr
    (tmp_path / "empty.ckpt").touch()
    code, _, stderr = run(capsys, tmp_path / "empty.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "empty.ckpt is empty (0 bytes)" in stderr, stderr
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    code, _, stderr = run(capsys, tmp_path / "list.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "list.ckpt holds a list; expected a dict" in stderr, stderr
    code, _, stderr = run(capsys, tmp_path, tmp_path / "o.safetensors")
    assert code == 2 and "is a folder; expected a .safetensors or torch checkpoint file" in stderr, stderr


def test_bad_output_paths(official_ckpt, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder.safetensors").mkdir()
    for output, message in ((tmp_path / "missing" / "o.safetensors", "missing does not exist; expected an existing"),
                            (tmp_path / "file" / "o.safetensors", "file is a file; expected an existing folder"),
                            (tmp_path / "folder.safetensors", "is a folder; expected the path of a .safetensors")):
        code, _, stderr = run(capsys, official_ckpt, output)
        assert code == 2 and message in stderr, stderr


def test_backbone_only_checkpoint_is_refused(fixture, tmp_path, capsys):
    sd = {k: v for k, v in fixture["checkpoint"]["state_dict"].items() if k.startswith("backbone.")}
    torch.save({"state_dict": sd}, tmp_path / "backbone.ckpt")
    code, _, stderr = run(capsys, tmp_path / "backbone.ckpt", tmp_path / "o.safetensors")
    assert code == 2 and "fits no vision2d model" in stderr and "missing" in stderr and "head.fc1" in stderr, stderr
    code, _, stderr = run(capsys, tmp_path / "backbone.ckpt", tmp_path / "o.safetensors", "--model", "test_mamba2d")
    assert code == 2 and "head.fc1" in stderr, stderr


def test_other_class_count(fixture, tmp_path, capsys):
    sd = dict(fixture["checkpoint"]["state_dict"])
    sd["head.fc2.weight"], sd["head.fc2.bias"] = sd["head.fc2.weight"][:10], sd["head.fc2.bias"][:10]
    torch.save({"state_dict": sd}, tmp_path / "ten.ckpt")
    out = tmp_path / "ten.safetensors"
    code, _, stderr = run(capsys, tmp_path / "ten.ckpt", out)
    assert code == 0, stderr
    with safetensors.safe_open(out, framework="pt") as f:
        assert f.metadata()["num_classes"] == "10"
    model = timm.create_model("test_mamba2d", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10))
    assert torch.equal(model.head.fc.weight, sd["head.fc2.weight"])


def test_callback_ema_weights(fixture, tmp_path, capsys):
    """The official EMA callback keeps its weights as a list in state_dict order under callbacks; the official
    validation evaluates those, so `auto` converts them."""
    sd = fixture["checkpoint"]["state_dict"]
    checkpoint = {"state_dict": {k: torch.zeros_like(v) for k, v in sd.items()}, "epoch": 3,
                  "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None},
                                "EMA{'decay': 0.999}": {"cur_step": 10, "ema_weights": list(sd.values())}}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    out = tmp_path / "ema.safetensors"
    for argv in ([], ["--weights", "callback-ema"], ["--weights", "callback-ema", "--model", "test_mamba2d"]):
        code, stdout, stderr = run(capsys, tmp_path / "last.ckpt", out, *argv)
        assert code == 0, stderr
        assert "EMA callback" in stdout
        model = timm.create_model("test_mamba2d", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
        assert torch.equal(model.stem.conv.weight, sd["backbone.ds.stem.conv.weight"])
    code, stdout, stderr = run(capsys, tmp_path / "last.ckpt", out, "--weights", "state_dict")
    assert code == 0 and "'state_dict'" in stdout, stderr
    model = timm.create_model("test_mamba2d", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    assert not model.stem.conv.weight.any()
    torch.save({"state_dict": sd}, tmp_path / "plain.ckpt")
    code, _, stderr = run(capsys, tmp_path / "plain.ckpt", out, "--weights", "callback-ema")
    assert code == 2 and "callback-ema" in stderr
    bad = dict(checkpoint, callbacks={"EMA": {"ema_weights": list(sd.values())[:-1]}})
    torch.save(bad, tmp_path / "bad_ema.ckpt")
    code, _, stderr = run(capsys, tmp_path / "bad_ema.ckpt", out)
    assert code == 2 and f"holds {len(sd) - 1} EMA tensors but the state_dict has {len(sd)}" in stderr, stderr


def test_command_line(official_ckpt, tmp_path):
    out = tmp_path / "cli.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tool finds the package by itself
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), str(official_ckpt),
                           str(out), "--model", "test_mamba2d"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "test_mamba2d, 1000 classes" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), str(official_ckpt),
                           str(out), "--model", "mamba2d_small"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and proc.stderr.startswith("error: mamba2d_small:"), proc.stderr
