"""Training checkpoints: one folder per save, written atomically, with ``last`` and ``best`` links in the run folder.

::

    <run>/epoch-0007/                  a complete checkpoint (epoch-0007-step-000123 when saved mid-epoch)
        model.safetensors              weights in the vision2d format (tools/validate.py, timm pretrained path)
        model_ema.safetensors          EMA weights, when EMA is on
        trainer_state.pt               optimizer, scheduler, scaler, per-process RNG, epoch, step, metrics history
        config.yaml                    the settings of tools/train.py, the defaults of a resumed run
        manifest.json                  size and sha256 of each file above, written last
    <run>/last -> epoch-0007           symbolic links, each replaced atomically
    <run>/best -> epoch-0005           best validation top-1 so far

A checkpoint is built in a hidden temporary folder and renamed into place when complete, and only then do the links
move; older checkpoints are deleted after that. A crash at any point leaves ``last`` naming a complete checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ..checkpoint import (CheckpointError, atomic_write, check_weights_model, fsync_directory,
                          load_safetensors_weights, save_safetensors_weights)

MODEL_FILE = "model.safetensors"
EMA_FILE = "model_ema.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LINKS = ("last", "best")
_CHECKPOINT_NAME = re.compile(r"epoch-\d{4}(-step-\d{6})?")


@dataclass
class TrainingCheckpoint:
    """A loaded checkpoint: weights (name -> tensor), EMA weights or None, the trainer state and the settings."""
    directory: Path
    model_state: dict
    ema_state: dict | None
    trainer_state: dict
    config: dict


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """Folder name of the checkpoint after ``epoch`` whole epochs (and ``step`` optimizer steps of the next)."""
    return f"epoch-{epoch:04d}" if step is None else f"epoch-{epoch:04d}-step-{step:06d}"


def save_training_checkpoint(run_dir: Path, name: str, model_name: str, num_classes: int, data_config: dict,
                             model_state: dict, ema_state: dict | None, trainer_state: dict, config: dict,
                             is_best: bool) -> Path:
    """Write checkpoint ``run_dir/name`` atomically, point ``last`` (and ``best``) at it, delete unlinked ones.

    The weight files carry ``model_name``, ``num_classes`` and ``data_config`` (see vision2d.checkpoint).
    """
    final_dir = run_dir / name
    temp_dir = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(temp_dir, ignore_errors=True)
    temp_dir.mkdir(parents=True)
    save_safetensors_weights(model_state, temp_dir / MODEL_FILE, model_name, num_classes, data_config)
    if ema_state is not None:
        save_safetensors_weights(ema_state, temp_dir / EMA_FILE, model_name, num_classes, data_config)
    atomic_write(temp_dir / STATE_FILE, lambda temp_path: torch.save(trainer_state, temp_path))
    atomic_write(temp_dir / CONFIG_FILE, lambda temp_path: temp_path.write_text(yaml.safe_dump(config)))
    manifest = {path.name: dict(size=path.stat().st_size, sha256=_sha256(path))
                for path in sorted(temp_dir.iterdir())}
    atomic_write(temp_dir / MANIFEST_FILE, lambda temp_path: temp_path.write_text(json.dumps(manifest, indent=1)))
    if final_dir.exists():  # saved before by this run, resumed from an earlier checkpoint: move it aside, and
        os.rename(final_dir, run_dir / f".{name}.tmp-replaced-{os.getpid()}")  # delete it once the links move
    os.rename(temp_dir, final_dir)
    fsync_directory(run_dir)
    for link in ("last", "best") if is_best else ("last",):
        _point_link(run_dir, link, name)
    remove_unlinked_checkpoints(run_dir)
    return final_dir


def remove_unlinked_checkpoints(run_dir: Path) -> None:
    """Delete checkpoint folders that neither ``last`` nor ``best`` names, and leftover temporary folders."""
    linked = {os.readlink(run_dir / link) for link in LINKS if (run_dir / link).is_symlink()}
    for entry in run_dir.iterdir():
        is_leftover = entry.name.startswith(".") and ".tmp-" in entry.name
        if is_leftover or (_CHECKPOINT_NAME.fullmatch(entry.name) and entry.name not in linked):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder itself, or a run folder (its ``last``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / "last").exists():
        return (path / "last").resolve()
    if (path / MANIFEST_FILE).exists() or (path / MODEL_FILE).exists():
        return path.resolve()
    raise CheckpointError(f"{path} is neither a checkpoint folder (with {MANIFEST_FILE}) nor a run folder with a "
                          f"'last' checkpoint")


def load_training_checkpoint(path: str | os.PathLike, model_name: str) -> TrainingCheckpoint:
    """Load and verify a checkpoint (sizes and sha256 of its files) of ``model_name``; CheckpointError if not."""
    directory = resolve_checkpoint_dir(path)
    try:
        verify_manifest(directory)
    except CheckpointError as error:
        raise CheckpointError(f"{error}{_other_checkpoints_hint(directory)}") from error
    model_state, metadata = load_safetensors_weights(directory / MODEL_FILE)
    check_weights_model(metadata, model_name, directory / MODEL_FILE)
    ema_state = load_safetensors_weights(directory / EMA_FILE)[0] if (directory / EMA_FILE).exists() else None
    trainer_state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    return TrainingCheckpoint(directory, model_state, ema_state, trainer_state, read_checkpoint_config(directory))


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The tools/train.py settings saved with a checkpoint (``path`` as for :func:`resolve_checkpoint_dir`)."""
    config_path = resolve_checkpoint_dir(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"checkpoint {config_path.parent} is incomplete: it has no {CONFIG_FILE}")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise CheckpointError(f"{config_path} is corrupt: {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is corrupt: it holds no mapping of settings")
    return config


def verify_manifest(directory: Path) -> None:
    """Check every file listed in ``directory/manifest.json`` for presence, size and sha256."""
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST_FILE} is corrupt ({error})") from error
    for name, expected in manifest.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"checkpoint file {file} is truncated or corrupt: {size} bytes, "
                                  f"expected {expected['size']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: its sha256 differs from {MANIFEST_FILE}")


def _other_checkpoints_hint(directory: Path) -> str:
    others = sorted(entry.name for entry in directory.parent.iterdir()
                    if _CHECKPOINT_NAME.fullmatch(entry.name) and entry != directory)
    return f"; other checkpoints of this run: {', '.join(others)}" if others else ""


def _point_link(run_dir: Path, link: str, target_name: str) -> None:
    temp_link = run_dir / f".{link}.tmp-{os.getpid()}"
    temp_link.unlink(missing_ok=True)
    os.symlink(target_name, temp_link)
    os.replace(temp_link, run_dir / link)
    fsync_directory(run_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
