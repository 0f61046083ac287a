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
    <run>/.lock                        held (flock) by the training process writing the run folder

A checkpoint is built in a hidden temporary folder and renamed to a name that is free (``epoch-0007.2`` when a run
resumed from an earlier checkpoint saves ``epoch-0007`` again), so no folder a link names is ever renamed or
replaced; only then do the links move, and only then are unlinked checkpoints deleted (renamed aside first, so a
half-deleted folder never carries a checkpoint's name). A kill at any point leaves ``last`` naming a complete
checkpoint; a failed write (full disk) removes the temporary folder and leaves the links as they were.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import time
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
LOCK_FILE = ".lock"
LINKS = ("last", "best")
_CHECKPOINT_NAME = re.compile(r"epoch-\d{4}(-step-\d{6})?(\.\d+)?")


@dataclass
class TrainingCheckpoint:
    """A loaded checkpoint: weights (name -> tensor), EMA weights or None, the trainer state and the settings."""
    directory: Path
    model_state: dict
    ema_state: dict | None
    trainer_state: dict
    config: dict


class MidEpochSchedule:
    """When to checkpoint inside an epoch: every ``every_steps`` optimizer steps of the run, and/or once
    ``every_minutes`` have passed since the last save (0 turns either off)."""

    def __init__(self, every_steps: int, every_minutes: float):
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60
        self.last_save = time.monotonic()

    def due(self, num_updates: int) -> bool:
        by_steps = self.every_steps > 0 and num_updates % self.every_steps == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self.last_save >= self.every_seconds
        return by_steps or by_time

    def saved(self) -> None:
        self.last_save = time.monotonic()


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """Folder name of the checkpoint after ``epoch`` whole epochs (and ``step`` optimizer steps of the next)."""
    return f"epoch-{epoch:04d}" if step is None else f"epoch-{epoch:04d}-step-{step:06d}"


def save_training_checkpoint(run_dir: Path, name: str, model_name: str, num_classes: int, data_config: dict,
                             model_state: dict, ema_state: dict | None, trainer_state: dict, config: dict,
                             is_best: bool) -> Path:
    """Write checkpoint ``run_dir/name`` atomically, point ``last`` (and ``best``) at it, delete unlinked ones.

    Returns the checkpoint folder: ``run_dir/name``, or ``run_dir/name.<n>`` if ``name`` is taken (by a checkpoint
    of the timeline a resumed run abandoned). The weight files carry ``model_name``, ``num_classes`` and
    ``data_config`` (see vision2d.checkpoint). CheckpointError if writing fails (e.g. a full disk): the partial
    checkpoint is removed and the links keep naming the previous one.
    """
    final_dir = run_dir / _free_name(run_dir, name)
    temp_dir = run_dir / f".{final_dir.name}.tmp-{os.getpid()}"
    try:
        _remove_folder(temp_dir)
        temp_dir.mkdir()
        save_safetensors_weights(model_state, temp_dir / MODEL_FILE, model_name, num_classes, data_config)
        if ema_state is not None:
            save_safetensors_weights(ema_state, temp_dir / EMA_FILE, model_name, num_classes, data_config)
        atomic_write(temp_dir / STATE_FILE, lambda temp_path: torch.save(trainer_state, temp_path))
        atomic_write(temp_dir / CONFIG_FILE, lambda temp_path: temp_path.write_text(yaml.safe_dump(config)))
        manifest = {path.name: dict(size=path.stat().st_size, sha256=_sha256(path))
                    for path in sorted(temp_dir.iterdir())}
        atomic_write(temp_dir / MANIFEST_FILE, lambda temp_path: temp_path.write_text(json.dumps(manifest, indent=1)))
        os.rename(temp_dir, final_dir)
        fsync_directory(run_dir)
        for link in ("last", "best") if is_best else ("last",):
            _point_link(run_dir, link, final_dir.name)
        remove_unlinked_checkpoints(run_dir)
    except OSError as error:
        shutil.rmtree(temp_dir, ignore_errors=True)
        last = run_dir / "last"
        kept = f"'last' names {os.readlink(last)}" if last.is_symlink() else "there is no 'last' checkpoint yet"
        raise CheckpointError(f"could not save checkpoint {final_dir} ({error}); its partial copy was removed and "
                              f"{kept}") from error
    return final_dir


def lock_run_folder(run_dir: Path):
    """Take the exclusive lock of ``run_dir`` (flock on ``run_dir/.lock``); returns the open lock file, which holds
    the lock until it is closed or the process ends, however it ends. CheckpointError if another process holds it."""
    lock_file = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise CheckpointError(f"run folder {run_dir} is in use by another training process (pid {holder}): wait for "
                              f"it to end, or choose another --experiment") from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def remove_unlinked_checkpoints(run_dir: Path) -> None:
    """Delete checkpoint folders that neither ``last`` nor ``best`` names, and leftover temporary entries."""
    linked = {os.readlink(run_dir / link) for link in LINKS if (run_dir / link).is_symlink()}
    for entry in sorted(run_dir.iterdir()):
        if entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_dir() and not entry.is_symlink():
            _remove_folder(entry)
        elif entry.name.startswith(".") and ".tmp-" in entry.name:
            entry.unlink()
        elif _CHECKPOINT_NAME.fullmatch(entry.name) and entry.name not in linked and entry.is_dir():
            deleting = run_dir / f".{entry.name}.tmp-deleting-{os.getpid()}"
            os.rename(entry, deleting)  # never a half-deleted folder under a checkpoint's name
            _remove_folder(deleting)


def list_checkpoints(run_dir: Path) -> list[str]:
    """Names of the checkpoint folders in ``run_dir``, oldest first."""
    return sorted(entry.name for entry in run_dir.iterdir() if _CHECKPOINT_NAME.fullmatch(entry.name)
                  and entry.is_dir())


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder named by ``path``: a checkpoint folder itself, or a run folder (its ``last``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; expected a checkpoint folder or a run folder")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; expected a checkpoint folder (with {MANIFEST_FILE}) or a "
                              f"run folder with a 'last' checkpoint")
    last = path / "last"
    if last.is_symlink() and not last.exists():
        remaining = list_checkpoints(path)
        raise CheckpointError(f"{last} names {os.readlink(last)}, which does not exist; checkpoints that remain in "
                              f"{path}: {', '.join(remaining) if remaining else 'none'} (resume one of them by path)")
    if last.exists():
        return last.resolve()
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
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST_FILE} is corrupt ({error})") from error
    if not isinstance(manifest, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
            for entry in manifest.values()):
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST_FILE} is corrupt: expected a mapping of file names "
                              f'to {{"size": <int>, "sha256": <hex>}}, got {json.dumps(manifest)[:200]}')
    for name, expected in manifest.items():
        file = directory / name
        if Path(name).name != name or not file.is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"checkpoint file {file} is truncated or corrupt: {size} bytes, "
                                  f"expected {expected['size']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt: its sha256 differs from {MANIFEST_FILE}")


def _other_checkpoints_hint(directory: Path) -> str:
    others = [name for name in list_checkpoints(directory.parent) if name != directory.name]
    return f"; other checkpoints of this run: {', '.join(others)}" if others else ""


def _point_link(run_dir: Path, link: str, target_name: str) -> None:
    temp_link = run_dir / f".{link}.tmp-{os.getpid()}"
    temp_link.unlink(missing_ok=True)
    os.symlink(target_name, temp_link)
    os.replace(temp_link, run_dir / link)
    fsync_directory(run_dir)


def _free_name(run_dir: Path, name: str) -> str:
    """``name``, or ``name.2``, ``name.3``, ... : the first that no entry of ``run_dir`` has."""
    candidates = (name if number == 1 else f"{name}.{number}" for number in itertools.count(1))
    return next(candidate for candidate in candidates if not os.path.lexists(run_dir / candidate))


def _remove_folder(path: Path) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
