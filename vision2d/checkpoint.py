"""vision2d weight files: a timm model's ``state_dict()`` stored as safetensors and tagged with its model.

A weight file holds every entry of ``model.state_dict()`` (floating tensors as fp32, all contiguous, on the CPU) and
the safetensors metadata ``{"format": "vision2d", "model": <timm model name>, "num_classes": str(n)}``, optionally
with ``"data_config"``: the JSON of the timm data config the weights were trained with (input_size, interpolation,
mean, std, crop_pct, crop_mode), which :func:`create_model_from_weights` applies to the model's pretrained cfg.
Metadata is data: each field is checked (:func:`read_data_config`); a data_config key other than those six, or a
value of the wrong type or out of range, is an error naming the file and the field.
It loads with ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH, num_classes=n),
num_classes=n)``, or with :func:`create_model_from_weights`, which reads name and class count from the file.
Files are written atomically: a crash while writing leaves the previous file intact.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Callable

import safetensors
import safetensors.torch
import timm
import torch

WEIGHTS_FORMAT = "vision2d"


class CheckpointError(RuntimeError):
    """A checkpoint or weight file is missing, unreadable, truncated, or belongs to another model."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` for a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    Readers see either the old file or the complete new one; the temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    temp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temp_path)
        with open(temp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
    fsync_directory(path.parent)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (renames, new files) to disk."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_safetensors_weights(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, model_name: str,
                             num_classes: int, data_config: dict | None = None,
                             extra_metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict`` (name -> tensor of any shape) to ``path`` in the vision2d weight format, atomically.

    ``data_config``: the timm data config of training (see :func:`timm.data.resolve_data_config`), if it differs
    from the model's default cfg and loaders should follow it. ``extra_metadata``: more string entries (e.g. "source").
    """
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensors[name] = tensor.contiguous().clone()  # clone: safetensors refuses tensors that share storage
    metadata = {"format": WEIGHTS_FORMAT, "model": model_name, "num_classes": str(int(num_classes))}
    if data_config is not None:
        metadata["data_config"] = json.dumps(data_config)
    metadata.update(extra_metadata or {})
    atomic_write(path, lambda temp_path: safetensors.torch.save_file(tensors, temp_path, metadata=metadata))


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors metadata of ``path`` (empty for files without metadata); a clear error if unreadable."""
    path = _existing_file(path)
    try:
        with safetensors.safe_open(path, framework="pt") as weights:
            return dict(weights.metadata() or {})
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"weight file {path} is truncated or corrupt: {error}") from error


def load_safetensors_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a vision2d weight file: (state_dict on the CPU, metadata with "model" and "num_classes")."""
    metadata = read_weights_metadata(path)
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is not a vision2d weight file: its metadata is {metadata}, expected "
                              f"format={WEIGHTS_FORMAT!r} with 'model' and 'num_classes'")
    try:
        state_dict = safetensors.torch.load_file(path, device="cpu")
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"weight file {path} is truncated or corrupt: {error}") from error
    return state_dict, metadata


def check_weights_model(metadata: dict[str, str], model_name: str, path: str | os.PathLike) -> None:
    """Raise CheckpointError if vision2d weight metadata names a model other than ``model_name``."""
    if metadata.get("format") == WEIGHTS_FORMAT and metadata.get("model") != model_name:
        raise CheckpointError(f"{path} holds weights of model {metadata.get('model')!r}, not of {model_name!r}")


def create_model_from_weights(path: str | os.PathLike, model_name: str | None = None,
                              num_classes: int | None = None, **model_kwargs) -> torch.nn.Module:
    """Create a timm model and load weights from ``path`` through timm's pretrained path (and its filter fn).

    For vision2d weight files, the model name and class count default to those in the file, a different
    ``model_name`` is an error, and the file's data config (if any) overrides the model's pretrained cfg. Other
    files (e.g. official checkpoints) need ``model_name``; ``num_classes`` then defaults to the pretrained cfg.
    """
    path = _existing_file(path)
    if path.suffix == ".safetensors":
        metadata = read_weights_metadata(path)
    else:
        load_torch_checkpoint(path)  # a clear error before timm's loader (which loads weights-only too) fails
        metadata = {}
    overlay = dict(file=str(path))
    if metadata.get("format") == WEIGHTS_FORMAT:
        model_name = model_name or _metadata_model_name(metadata, path)
        check_weights_model(metadata, model_name, path)
        num_classes = num_classes if num_classes is not None else _metadata_num_classes(metadata, path)
        overlay.update(read_data_config(metadata, path))
    elif model_name is None:
        raise CheckpointError(f"{path} is not a vision2d weight file, so the model name must be given")
    check_model_name(model_name)
    if num_classes is not None:
        overlay["num_classes"] = num_classes
        model_kwargs["num_classes"] = num_classes
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)


def check_state_dict_fits(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, hint: str = "") -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped key of ``state_dict`` (in the model's keys)
    for ``model``, a timm model; each family's ``checkpoint_filter_fn`` ends with it. Two parts may differ, as in
    timm's pretrained loader, which adapts them after the filter:

    * the first conv (pretrained cfg ``first_conv``) may hold the pretrained cfg's ``input_size[0]`` input channels
      where the model has another ``in_chans``: timm's ``adapt_input_conv`` converts it;
    * the classifier (pretrained cfg ``classifier``) may have any size or be absent. The file's class count
      (0 when absent) becomes the pretrained cfg's ``num_classes``, so timm keeps the file's classifier when the model
      has as many classes and replaces it with a new one otherwise; an absent classifier is filled with the model's
      own (new) one so that strict loading still holds.

    ``hint`` is appended to the error (e.g. how an older checkpoint layout differs).
    """
    expected = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = _as_tuple(cfg.get("classifier"))
    is_classifier = lambda key: any(key.startswith(name + ".") for name in classifiers)  # noqa: E731
    first_conv_weights = {name + ".weight" for name in _as_tuple(cfg.get("first_conv"))}
    pretrained_in_chans = (cfg.get("input_size") or (3,))[0]

    def fits(key: str, value: torch.Tensor) -> bool:
        shape, model_shape = tuple(value.shape), tuple(expected[key].shape)
        if key in first_conv_weights and len(shape) == len(model_shape) > 1:
            return shape[1] == pretrained_in_chans and shape[:1] + shape[2:] == model_shape[:1] + model_shape[2:]
        return shape == model_shape

    missing = sorted(k for k in expected if k not in state_dict and not is_classifier(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not is_classifier(k))
    misshaped = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                       for k, v in state_dict.items() if k in expected and not is_classifier(k) and not fits(k, v))
    if missing or unexpected or misshaped:
        parts = [f"{title} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                 for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                 if keys]
        raise ValueError(f"checkpoint does not match this {type(model).__name__}: " + "; ".join(parts) + hint)
    if classifiers and "num_classes" in cfg:
        file_classifier = state_dict.get(classifiers[0] + ".weight")
        cfg["num_classes"] = 0 if file_classifier is None else file_classifier.shape[0]
        if file_classifier is None:
            state_dict.update({k: v for k, v in expected.items() if is_classifier(k)})


def _as_tuple(names) -> tuple:
    return (names,) if isinstance(names, str) else tuple(names or ())


MAX_NUM_CLASSES = 100_000
MAX_IMAGE_SIDE = 8192
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")


def read_data_config(metadata: dict[str, str], path: str | os.PathLike) -> dict:
    """The ``data_config`` of vision2d weight metadata as pretrained cfg entries, every field checked.

    Only the documented fields are data: ``input_size`` [channels 1-16, height, width 1-8192], ``interpolation``
    (one of :data:`INTERPOLATIONS`), ``mean`` / ``std`` (one finite number per channel, std > 0), ``crop_pct``
    (0 < x <= 1), ``crop_mode`` (one of :data:`CROP_MODES`). Anything else (e.g. ``file``, ``url``, ``hf_hub_id``,
    which would redirect loading) is a CheckpointError naming the file and the field.
    """
    try:
        config = json.loads(metadata.get("data_config", "{}"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"weight file {path}: metadata field data_config is not JSON ({error})") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"weight file {path}: metadata field data_config must be a JSON object, got "
                              f"{type(config).__name__}")
    unknown = sorted(set(config) - {"input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"})
    if unknown:
        raise CheckpointError(f"weight file {path}: metadata field data_config.{unknown[0]} is not a data config "
                              f"entry (accepted: input_size, interpolation, mean, std, crop_pct, crop_mode)")

    def fail(field: str, expected: str):
        raise CheckpointError(f"weight file {path}: metadata field data_config.{field} must be {expected}, got "
                              f"{json.dumps(config[field])[:100]}")

    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    channels = 3
    if "input_size" in config:
        size = config["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in size)
                and 1 <= size[0] <= 16 and all(1 <= side <= MAX_IMAGE_SIDE for side in size[1:])):
            fail("input_size", f"[channels 1-16, height, width] with sides 1-{MAX_IMAGE_SIDE}")
        channels = size[0]
    for field, choices in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if field in config and config[field] not in choices:
            fail(field, f"one of {', '.join(choices)}")
    for field, lowest in (("mean", -math.inf), ("std", 0.0)):
        if field in config:
            values = config[field]
            if not (isinstance(values, list) and len(values) == channels and all(is_number(v) for v in values)
                    and all(v > lowest for v in values)):
                positive = ", each > 0" if lowest == 0 else ""
                fail(field, f"{channels} finite numbers (one per input channel){positive}")
    if "crop_pct" in config and not (is_number(config["crop_pct"]) and 0 < config["crop_pct"] <= 1):
        fail("crop_pct", "a number in (0, 1]")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in config.items()}


def _metadata_model_name(metadata: dict[str, str], path: str | os.PathLike) -> str:
    name = metadata.get("model")
    if not isinstance(name, str) or not timm.is_model(name):
        raise CheckpointError(f"weight file {path}: metadata field model must name a registered timm model, got "
                              f"{name!r}")
    return name


def _metadata_num_classes(metadata: dict[str, str], path: str | os.PathLike) -> int:
    value = metadata.get("num_classes")
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and int(value) <= MAX_NUM_CLASSES):
        raise CheckpointError(f"weight file {path}: metadata field num_classes must be a whole number from 0 to "
                              f"{MAX_NUM_CLASSES}, got {value!r}")
    return int(value)


def check_model_name(model_name: str) -> None:
    """Raise ValueError naming close matches and vision2d's models if timm has no model called ``model_name``."""
    if not timm.is_model(model_name):
        from . import list_models  # vision2d's own models (the package has finished importing by now)

        close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {model_name!r} (not registered with timm; did you `import vision2d`?){hint}; "
                         f"vision2d's models: {', '.join(list_models())}")


def load_torch_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` of a checkpoint that must hold a dict; CheckpointError naming the file
    and what was expected otherwise (not a torch file, objects that weights-only loading refuses, no dict)."""
    path = _existing_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler fails in many ways on files that are not torch checkpoints
        if is_weights_only_refusal(error):
            raise CheckpointError(untrusted_pickle_message(path, error)) from error
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"weight file {path} is not a readable torch checkpoint: truncated, corrupt, or not "
                              f"written by torch.save (safetensors files need the .safetensors suffix): {reason}") \
            from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"weight file {path} holds a {type(checkpoint).__name__}; expected a dict: a state dict "
                              f"of tensors, or one under 'state_dict' / 'model'")
    return checkpoint


def is_weights_only_refusal(error: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` raised ``error`` because the file pickles a non-allowlisted object."""
    return isinstance(error, pickle.UnpicklingError) and "add_safe_globals" in str(error)


def untrusted_pickle_message(path: str | os.PathLike, error: Exception) -> str:
    """The error for a file ``torch.load(weights_only=True)`` refuses: which object, and how to go on if trusted."""
    refused = next((line.strip() for line in str(error).splitlines()
                    if "Unsupported global" in line or "Can only build" in line), "")
    return (f"{path} holds Python objects that weights-only loading refuses ({refused or 'see torch.load'}); "
            f"unpickling them could run code stored in the file. If you trust the file and its source, load it once "
            f"yourself with torch.load(path, weights_only=False), torch.save just its state dict (a dict of tensors) "
            f"to a new file, and use that file")


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a non-empty file; FileNotFoundError / CheckpointError saying what it is if not."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.is_dir():
        inside = sorted(path.glob("*.safetensors"))
        hint = f" (it holds {', '.join(str(file) for file in inside[:3])})" if inside else ""
        raise CheckpointError(f"weight file {path} is a folder; expected a .safetensors or torch checkpoint file{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weight file {path} is empty (0 bytes); expected a .safetensors or torch checkpoint "
                              f"file")
    return path
