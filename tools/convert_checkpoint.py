#!/usr/bin/env python
"""Convert an official checkpoint of any family of the zoo (Mamba2D, VMamba, ...) to a vision2d safetensors weight file.

    python tools/convert_checkpoint.py M2D-T-backbone.ckpt mamba2d_tiny.safetensors [--model mamba2d_tiny]
    python tools/convert_checkpoint.py vssm1_tiny_0230s_ckpt_epoch_264.pth vmamba_tiny.safetensors

The input is read with ``torch.load(weights_only=True)``. Accepted layouts: a Lightning checkpoint (``state_dict``
with ``backbone.*``, ``norm.*``, ``head.*``), a raw state dict, or one wrapped under ``model``/``model_ema``/
``state_dict_ema``; keys may carry ``module.``/``_orig_mod.`` prefixes; conv weights may be channels_last.

Which weights (``--weights``): a Lightning checkpoint written with the official EMA callback also holds the EMA
weights in its callback state (``callbacks`` -> ``ema_weights``, a list in state-dict order), and the official
validation (``evaluate_ema_weights_instead: true`` in every released config) evaluates those, not ``state_dict``.
``auto`` (default) therefore converts the callback's EMA weights when present, else ``state_dict`` (``model_ema`` /
``state_dict_ema`` before ``model`` in other layouts); ``state_dict`` and ``callback-ema`` force one or the other.
Note that loading a ``.ckpt`` directly through timm's pretrained path always takes ``state_dict``.

Without ``--model`` the family and variant are inferred: the checkpoint is offered to every model the zoo registers
(each family's ``checkpoint_filter_fn`` on a meta-device model) and the one model it fits is taken. The released
VMamba files pickle their yacs training config beside the weights: it is read as plain data (each family module's
``released_checkpoint_globals()``), nothing else outside torch's weights-only allowlist is accepted. The weights go
through the family's ``checkpoint_filter_fn``, are loaded strictly into the timm model,
and are written atomically as safetensors with metadata ``{"format": "vision2d", "model": name, "num_classes": n,
"source": <input file name>}``. Load the result with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))`` (add ``num_classes`` to both
for a classifier other than 1000 classes) or ``vision2d.checkpoint.create_model_from_weights(OUT)``.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import vision2d  # noqa: E402,F401  (registers the models with timm)
from vision2d.checkpoint import (CheckpointError, load_safetensors_weights, load_torch_checkpoint,  # noqa: E402
                                 save_safetensors_weights)
import vision2d.models  # noqa: E402

class ConversionError(RuntimeError):
    """The input cannot be converted (unreadable, another architecture, keys or shapes that do not fit)."""


def family_modules() -> list:
    """The modules of the model families vision2d.models exports (each with a checkpoint_filter_fn)."""
    modules = {sys.modules[getattr(vision2d.models, name).__module__]: None for name in vision2d.models.__all__}
    return [module for module in modules if hasattr(module, "checkpoint_filter_fn")]


def zoo_models() -> dict:
    """{timm model name: family module} for every model the zoo registers."""
    models = {}
    for module in family_modules():
        for name in timm.list_models(module=module.__name__.rsplit(".", 1)[-1]):
            if timm.models.model_entrypoint(name).__module__ == module.__name__:
                models[name] = module
    return models


def released_checkpoint_globals() -> list:
    """The globals that the families' official releases pickle beside their weights, read as inert data."""
    return [item for module in family_modules() if hasattr(module, "released_checkpoint_globals")
            for item in module.released_checkpoint_globals()]


@functools.lru_cache(maxsize=None)
def _meta_model(name: str) -> torch.nn.Module:
    """The timm model `name` on the meta device (shapes only), built once per process; filters only read it."""
    with torch.device("meta"):
        return timm.create_model(name)


def _problem_count(error: Exception) -> int:
    counts = re.findall(r"(?:missing|unexpected|mis-shaped) \((\d+)\)", str(error))
    return sum(map(int, counts)) if counts else 10 ** 9


def fit(checkpoint: dict, names: list[str]) -> tuple[list[str], dict]:
    """(models among `names` that the checkpoint fits, {model: why not} for the others)."""
    models, fits, errors = zoo_models(), [], {}
    for name in names:
        try:
            models[name].checkpoint_filter_fn(checkpoint, _meta_model(name))
            fits.append(name)
        except Exception as error:  # noqa: BLE001  (any filter failure means: not this model)
            errors[name] = error
    return fits, errors


def infer_model_name(checkpoint: dict) -> str:
    """The one zoo model the checkpoint fits (its family's filter accepts it, shapes included)."""
    fits, errors = fit(checkpoint, sorted(zoo_models()))
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ConversionError(f"the checkpoint fits several models ({', '.join(fits)}); pass --model")
    tensors = [k for k, v in _unwrap(checkpoint).items() if isinstance(v, torch.Tensor)]
    closest = min(errors, key=lambda name: _problem_count(errors[name]))
    raise ConversionError(f"the checkpoint fits no vision2d model (its first keys: {', '.join(tensors[:8]) or 'none'}); "
                          f"closest is {closest}: {errors[closest]}; pass --model to convert for one model")


def _unwrap(checkpoint: dict) -> dict:
    for key in ("model_ema", "state_dict_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def resolve_model_name(name: str, checkpoint: dict | None = None) -> str:
    """A zoo model name, or a size ('tiny') naming the one family's model of that size (the one the checkpoint fits
    when several families have it)."""
    models = zoo_models()
    if name in models:
        return name
    candidates = sorted(model for model in models if model.endswith(f"_{name}") or model == f"test_{name}")
    if len(candidates) > 1 and checkpoint is not None:
        candidates = fit(checkpoint, candidates)[0] or candidates
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ConversionError(f"--model {name!r} is ambiguous: {', '.join(candidates)}; give the full name")
    raise ConversionError(f"unknown model {name!r}; expected one of {', '.join(sorted(models))}")


def convert(checkpoint: dict, model_name: str | None = None) -> tuple[str, int, torch.nn.Module]:
    """(model name, num_classes, timm model holding the converted weights)."""
    if model_name is None:
        model_name = infer_model_name(checkpoint)
    model_name = resolve_model_name(model_name, checkpoint)
    family = zoo_models()[model_name]
    reference = _meta_model(model_name)
    try:
        state_dict = family.checkpoint_filter_fn(checkpoint, reference)
    except ValueError as error:
        fits = fit(checkpoint, sorted(zoo_models()))[0]
        hint = f" (the checkpoint looks like {' or '.join(fits)})" if fits else ""
        raise ConversionError(f"{model_name}: {error}{hint}") from error
    classifier = reference.pretrained_cfg["classifier"]
    weight = state_dict.get(f"{classifier}.weight")
    if weight is None or reference.pretrained_cfg.get("num_classes") == 0:  # 0: the filter filled in a new one
        raise ConversionError(f"no classifier weight ({classifier}.weight after conversion) in the checkpoint: only "
                              f"full classifier checkpoints (backbone, norm and head) can be converted")
    num_classes = int(weight.shape[0])
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes).eval()
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


def load_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load(weights_only=True) of a dict, with clear errors (vision2d.checkpoint.load_torch_checkpoint)."""
    try:
        with torch.serialization.safe_globals(released_checkpoint_globals()):
            return load_torch_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as error:
        raise ConversionError(str(error)) from error


def check_output_path(path: str | os.PathLike) -> None:
    """The output must be a .safetensors file path in an existing folder."""
    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise ConversionError(f"output {path} must end in .safetensors")
    if path.is_dir():
        raise ConversionError(f"output {path} is a folder; expected the path of a .safetensors file to write")
    if not path.parent.is_dir():
        state = "is a file" if path.parent.exists() else "does not exist"
        raise ConversionError(f"output folder {path.parent} {state}; expected an existing folder to write {path.name} "
                              f"into")


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
                        help="timm model (e.g. mamba2d_tiny, vmamba_small), or a size (tiny) when the checkpoint "
                             "tells the family; inferred from the weights when omitted")
    parser.add_argument("--weights", choices=("auto", "state_dict", "callback-ema"), default="auto",
                        help="auto (default): the official EMA callback's weights when the checkpoint has them (what "
                             "the official validation evaluates), else state_dict; or force one")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.output)
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
