#!/usr/bin/env python
"""Convert an official Mamba2D v2 checkpoint (github cocoalex00/Mamba2D) to a vision2d safetensors weight file.

    python tools/convert_checkpoint.py M2D-T-backbone.ckpt mamba2d_tiny.safetensors [--model mamba2d_tiny]

The input is read with ``torch.load(weights_only=True)``. Accepted layouts: a Lightning checkpoint (``state_dict``
with ``backbone.*``, ``norm.*``, ``head.*``), a raw state dict, or one wrapped under ``model``/``model_ema``/
``state_dict_ema``; keys may carry ``module.``/``_orig_mod.`` prefixes; conv weights may be channels_last.

Which weights (``--weights``): a Lightning checkpoint written with the official EMA callback also holds the EMA
weights in its callback state (``callbacks`` -> ``ema_weights``, a list in state-dict order), and the official
validation (``evaluate_ema_weights_instead: true`` in every released config) evaluates those, not ``state_dict``.
``auto`` (default) therefore converts the callback's EMA weights when present, else ``state_dict`` (``model_ema`` /
``state_dict_ema`` before ``model`` in other layouts); ``state_dict`` and ``callback-ema`` force one or the other.
Note that loading a ``.ckpt`` directly through timm's pretrained path always takes ``state_dict``.

Without ``--model`` the variant is inferred from the stem width and the depth of stage 1 (nano 32/3, tiny 64/3,
small 96/12, test 16/2). The weights go through ``checkpoint_filter_fn``, are loaded strictly into the timm model,
and are written atomically as safetensors with metadata ``{"format": "vision2d", "model": name, "num_classes": n,
"source": <input file name>}``. Load the result with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))`` (add ``num_classes`` to both
for a classifier other than 1000 classes) or ``vision2d.checkpoint.create_model_from_weights(OUT)``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import vision2d  # noqa: E402,F401  (registers the models with timm)
from vision2d.checkpoint import load_safetensors_weights, save_safetensors_weights  # noqa: E402
from vision2d.models.mamba2d import (Mamba2D, _strip_prefixes, _unwrap_state_dict,  # noqa: E402
                                     checkpoint_filter_fn)

# (stem width, stage-1 depth) -> timm model
VARIANTS = {
    (32, 3): "mamba2d_nano",
    (64, 3): "mamba2d_tiny",
    (96, 12): "mamba2d_small",
    (16, 2): "test_mamba2d",
}
_STEM_KEYS = ("ds.stem.conv.weight", "stem.conv.weight")  # official, ours
_STAGE1_BLOCK = re.compile(r"^stages\.1\.(?:blocks\.)?(\d+)\.norm1\.weight$")
_CLASSIFIER_KEYS = ("head.fc2.weight", "head.fc.weight")  # official, ours


class ConversionError(RuntimeError):
    """The input cannot be converted (unreadable, another architecture, keys or shapes that do not fit)."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ConversionError(f"cannot read {path} with torch.load(weights_only=True): {error}") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def _callback_ema_states(checkpoint: dict) -> list:
    """[(callback name, ema_weights list)] for every callback state that holds EMA weights."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return []
    return [(name, state["ema_weights"]) for name, state in callbacks.items()
            if isinstance(state, dict) and isinstance(state.get("ema_weights"), (list, tuple))]


def select_weights(checkpoint: dict, weights: str = "auto") -> tuple[dict, str]:
    """(checkpoint to convert, description of the weights taken) for --weights auto / state_dict / callback-ema."""
    if weights not in ("auto", "state_dict", "callback-ema"):
        raise ConversionError(f"--weights must be auto, state_dict or callback-ema, got {weights!r}")
    if weights == "callback-ema" or (weights == "auto" and _callback_ema_states(checkpoint)
                                     and isinstance(checkpoint.get("state_dict"), dict)):
        return callback_ema_checkpoint(checkpoint), "EMA weights of the EMA callback state"
    for key in ("model_ema", "state_dict_ema", "state_dict", "model"):  # the order checkpoint_filter_fn uses
        if isinstance(checkpoint.get(key), dict):
            return checkpoint, f"'{key}'"
    return checkpoint, "the raw state dict"


def callback_ema_checkpoint(checkpoint: dict) -> dict:
    """{"state_dict": ...} with the official EMA callback's weights (a list in state_dict order) under the keys of
    the checkpoint's state_dict."""
    state_dict = checkpoint.get("state_dict")
    callbacks = checkpoint.get("callbacks")
    if not isinstance(state_dict, dict) or not isinstance(callbacks, dict):
        raise ConversionError("--weights callback-ema needs a Lightning checkpoint with 'state_dict' and 'callbacks'")
    found = _callback_ema_states(checkpoint)
    if len(found) != 1:
        raise ConversionError(f"--weights callback-ema: expected one callback state with 'ema_weights', found "
                              f"{len(found)} (callbacks: {list(callbacks)})")
    name, weights = found[0]
    keys = list(state_dict)
    if len(weights) != len(keys):
        raise ConversionError(f"--weights callback-ema: callback {name!r} holds {len(weights)} EMA tensors but the "
                              f"state_dict has {len(keys)} entries")
    for key, weight in zip(keys, weights):
        if not isinstance(weight, torch.Tensor) or weight.shape != state_dict[key].shape:
            raise ConversionError(f"--weights callback-ema: EMA tensor for {key} does not match its state_dict entry")
    return {"state_dict": dict(zip(keys, weights))}


def _stripped_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {_strip_prefixes(k): v for k, v in _unwrap_state_dict(checkpoint).items() if isinstance(v, torch.Tensor)}


def infer_model_name(checkpoint: dict) -> str:
    """The timm model whose stem width and stage-1 depth match the checkpoint."""
    tensors = _stripped_tensors(checkpoint)
    stem = next((tensors[k] for k in _STEM_KEYS if k in tensors), None)
    if stem is None or stem.dim() != 4:
        sample = ", ".join(list(tensors)[:8])
        raise ConversionError(f"cannot infer the Mamba2D variant: no stem conv weight ({' or '.join(_STEM_KEYS)}, "
                              f"optionally under backbone./module./_orig_mod.) in the checkpoint; its first keys "
                              f"are: {sample or '(none)'}; pass --model")
    width = stem.shape[0]
    depth = len({m[1] for k in tensors if (m := _STAGE1_BLOCK.match(k))})
    known = ", ".join(f"{name} (stem width {w}, stage-1 depth {d})" for (w, d), name in VARIANTS.items())
    if (width, depth) not in VARIANTS:
        raise ConversionError(f"no Mamba2D variant has stem width {width} and stage-1 depth {depth}; known: "
                              f"{known}; pass --model")
    return VARIANTS[(width, depth)]


def infer_num_classes(checkpoint: dict) -> int:
    tensors = _stripped_tensors(checkpoint)
    weight = next((tensors[k] for k in _CLASSIFIER_KEYS if k in tensors), None)
    if weight is None:
        raise ConversionError(f"no classifier weight ({' or '.join(_CLASSIFIER_KEYS)}) in the checkpoint: only full "
                              f"classifier checkpoints (backbone, norm and head) can be converted")
    return int(weight.shape[0])


def resolve_model_name(name: str) -> str:
    """Accept 'tiny' / 'mamba2d_tiny' / 'test_mamba2d'."""
    candidate = name if name.startswith(("mamba2d_", "test_")) else f"mamba2d_{name}"
    if not timm.is_model(candidate):
        raise ConversionError(f"unknown model {name!r}; expected one of {sorted(set(VARIANTS.values()))}")
    return candidate


def convert(checkpoint: dict, model_name: str | None = None) -> tuple[str, int, torch.nn.Module]:
    """(model name, num_classes, timm model holding the converted weights)."""
    guessed = None
    try:
        guessed = infer_model_name(checkpoint)
    except ConversionError:
        if model_name is None:
            raise
    model_name = resolve_model_name(model_name) if model_name else guessed
    num_classes = infer_num_classes(checkpoint)
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    if not isinstance(model, Mamba2D):
        raise ConversionError(f"{model_name} is not a Mamba2D model")
    model.eval()
    try:
        state_dict = checkpoint_filter_fn(checkpoint, model)
    except ValueError as error:
        hint = f" (the checkpoint looks like {guessed})" if guessed and guessed != model_name else ""
        raise ConversionError(f"{model_name}: {error}{hint}") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                 for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or misshaped:
        raise ConversionError(f"{model_name}: the converted weights do not fit: missing {missing}, unexpected "
                              f"{unexpected}, mis-shaped {misshaped}")
    model.load_state_dict(state_dict, strict=True)
    return model_name, num_classes, model


def save_weights(model: torch.nn.Module, path: str | os.PathLike, model_name: str, num_classes: int,
                 source: str) -> dict[str, str]:
    """Write the model's state_dict (fp32, contiguous) as vision2d safetensors, atomically; returns the metadata."""
    state_dict = model.state_dict()
    save_safetensors_weights(state_dict, path, model_name, num_classes, extra_metadata={"source": source})
    written, metadata = load_safetensors_weights(path)
    if written.keys() != state_dict.keys() or any(not torch.equal(written[k], v.float() if v.is_floating_point()
                                                                  else v) for k, v in state_dict.items()):
        raise ConversionError(f"{path}: the written file does not read back identically")
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="official checkpoint (.ckpt / .pth / .pt)")
    parser.add_argument("output", help="output .safetensors file")
    parser.add_argument("--model", default=None,
                        help="timm model (mamba2d_nano / mamba2d_tiny / mamba2d_small / test_mamba2d, or nano / tiny "
                             "/ small); inferred from the weights' shapes when omitted")
    parser.add_argument("--weights", choices=("auto", "state_dict", "callback-ema"), default="auto",
                        help="auto (default): the official EMA callback's weights when the checkpoint has them (what "
                             "the official validation evaluates), else state_dict; or force one")
    args = parser.parse_args(argv)
    try:
        if not str(args.output).endswith(".safetensors"):
            raise ConversionError(f"output {args.output} must end in .safetensors")
        checkpoint = load_checkpoint(args.checkpoint)
        checkpoint, taken = select_weights(checkpoint, args.weights)
        model_name, num_classes, model = convert(checkpoint, args.model)
        save_weights(model, args.output, model_name, num_classes, os.path.basename(args.checkpoint))
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.checkpoint} -> {args.output}: {model_name}, {num_classes} classes, {n_params:,} parameters "
          f"(from {taken})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
