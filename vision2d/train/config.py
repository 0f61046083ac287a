"""Command line and YAML configuration of tools/train.py.

Precedence, lowest first: the defaults, the YAML file of ``--config``, then the command line flags. The defaults are
the paper's ImageNet recipe (as in configs/train/); with ``--resume``, the settings saved with the checkpoint; with
neither ``--data-dir`` nor ``--config``, the embedded digits job's recipe (:data:`DIGITS_RECIPE`). YAML keys are the
flags' names with underscores; an unknown key is an error.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..checkpoint import check_model_name
from .checkpointing import read_checkpoint_config

DEFAULT_MODEL = "test_mamba2d"

# The embedded default job: scikit-learn's 8x8 digits stored as 32x32 RGB. Of the ImageNet augmentation it keeps
# only a mild random-resized crop (small zoom and shift) and label smoothing: flips turn digits into other shapes,
# colour jitter and RandAugment's colour ops mean nothing on grey strokes, crops down to 8% of the area and random
# erasing remove the digit, and mixup/cutmix slow a few-epoch run down.
DIGITS_RECIPE = dict(
    model=DEFAULT_MODEL, img_size=32, crop_pct=1.0, epochs=6, batch_size=32, lr_base=2e-3, lr_base_size=32,
    weight_decay=0.05, warmup_epochs=0.5, warmup_lr=1e-5, min_lr=1e-5, drop_path=0.0, drop_rate=0.0,
    aa=None, mixup=0.0, cutmix=0.0, smoothing=0.1, reprob=0.0, scale=[0.7, 1.0], ratio=[0.85, 1.18], hflip=0.0,
    color_jitter=0.0, model_ema_decay=0.99, model_ema_warmup=True, workers=0,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of tools/train.py; its defaults are the paper's recipe apart from the model and data."""
    parser = argparse.ArgumentParser(
        description="Train a timm model (ImageNet-style ImageFolder, or scikit-learn digits by default). The defaults "
                    "are the paper's ImageNet recipe; without --data-dir and --config the run is the embedded digits "
                    "job, whose own defaults each option names.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="YAML file of flag values (e.g. configs/train/mamba2d_tiny.yaml)")

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default=None,
                      help="ImageFolder root with train/<class>/* and val/<class>/*; none: scikit-learn digits")
    data.add_argument("--img-size", type=int, default=None, help="input size; none: the model's pretrained cfg")
    data.add_argument("--crop-pct", type=float, default=None, help="eval crop fraction; none: pretrained cfg")
    data.add_argument("--workers", type=int, default=8, help="data loader processes per training process")
    data.add_argument("--aa", type=none_or_str, default="rand-m9-mstd0.5-inc1",
                      help="timm auto-augment policy string ('none': off)")
    data.add_argument("--no-aug", action="store_true", help="train on resized, centre-cropped images only")
    data.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random-resized-crop area range")
    data.add_argument("--ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], help="random-resized-crop aspect range")
    data.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    data.add_argument("--color-jitter", type=float, default=0.4, help="colour jitter strength (unused with --aa)")
    data.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    data.add_argument("--remode", default="pixel", help="random erasing fill mode")
    data.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    data.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    data.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    data.add_argument("--mixup-switch-prob", type=float, default=0.5, help="probability of cutmix when both are on")
    data.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, help="timm model name")
    model.add_argument("--drop-path", type=float, default=None, help="drop-path rate; none: the model's default")
    model.add_argument("--drop-rate", type=float, default=None, help="head dropout; none: the model's default")
    model.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--opt", default="adamw", help="timm optimizer name")
    optim.add_argument("--lr", type=float, default=None,
                       help="absolute learning rate; none: lr_base * global batch / lr_base_size")
    optim.add_argument("--lr-base", type=float, default=4e-3, help="learning rate at global batch lr_base_size")
    optim.add_argument("--lr-base-size", type=int, default=4096, help="global batch of --lr-base")
    optim.add_argument("--weight-decay", type=float, default=0.05,
                       help="AdamW weight decay (none on norms, biases and model.no_weight_decay())")
    optim.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    optim.add_argument("--batch-size", type=int, default=64, help="images per process and step")
    optim.add_argument("--grad-accum-steps", type=int, default=1,
                       help="micro-batches per optimizer step; global batch = batch size x processes x this")
    optim.add_argument("--epochs", type=int, default=300)
    optim.add_argument("--sched", default="cosine", help="timm scheduler name")
    optim.add_argument("--warmup-epochs", type=float, default=15, help="linear warm-up epochs before the schedule")
    optim.add_argument("--warmup-lr", type=float, default=1e-6, help="learning rate at the start of warm-up")
    optim.add_argument("--min-lr", type=float, default=1e-6, help="final learning rate of the cosine")
    optim.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=True,
                       help="keep an EMA of the weights (timm ModelEmaV3); best checkpoint by its val top-1")
    optim.add_argument("--model-ema-decay", type=float, default=0.999)
    optim.add_argument("--model-ema-warmup", action=argparse.BooleanOptionalAction, default=False,
                       help="ramp the EMA decay up from 0 over the first steps")
    optim.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="autocast mixed precision; default: on for CUDA")
    optim.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                       help="autocast dtype (float16 adds a gradient scaler)")

    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data order and augmentation")
    run.add_argument("--device", default=None, help="cpu or cuda; default: cuda when available")
    run.add_argument("--output", default="output/train", help="folder of runs (and of the digits data set)")
    run.add_argument("--experiment", default=None,
                     help="run folder name under --output; default: a new <time>-<model>-<data>[-<n>]")
    run.add_argument("--resume", default=None,
                     help="checkpoint folder, or run folder (resumes its 'last'), to continue exactly")
    run.add_argument("--checkpoint-minutes", type=float, default=30,
                     help="also checkpoint inside an epoch after this many minutes since the last save (0: off)")
    run.add_argument("--checkpoint-steps", type=int, default=0,
                     help="also checkpoint inside an epoch every this many optimizer steps (0: off)")
    run.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in the run folder")
    for action in parser._actions:  # --help shows the defaults of both jobs
        if action.dest in DIGITS_RECIPE:
            action.help = (f"{action.help or ''} (default: %(default)s; the digits job, without --data-dir and "
                           f"--config: {DIGITS_RECIPE[action.dest]})").lstrip()
    return parser


def none_or_str(value: str) -> str | None:
    """Flag value parser mapping 'none' (any case) to None."""
    return None if value.lower() == "none" else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the flags over the YAML of ``--config`` over the defaults.

    The defaults are the paper's recipe; those of ``--resume`` are the settings saved with its checkpoint; with
    neither a data dir nor a config, those of the embedded digits job.
    """
    parser = build_parser()
    flags_only = parser.parse_args(argv)
    if flags_only.resume:
        resumed = read_checkpoint_config(flags_only.resume)
        parser.set_defaults(**{key: value for key, value in resumed.items() if key not in ("resume", "config")})
    elif flags_only.data_dir is None and flags_only.config is None:
        parser.set_defaults(**DIGITS_RECIPE)
    if flags_only.config:
        yaml_values = load_yaml_config(flags_only.config, parser)
        if not (flags_only.data_dir or yaml_values.get("data_dir") or parser.get_default("data_dir")):
            raise ValueError(f"--config {flags_only.config} is a recipe for an ImageFolder data set: pass --data-dir")
        parser.set_defaults(**yaml_values)
    args = parser.parse_args(argv)
    check_args(args)
    return args


def load_yaml_config(path: str | Path, parser: argparse.ArgumentParser) -> dict:
    """The mapping in a YAML config file, checked against the parser's option names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    known = {action.dest for action in parser._actions} - {"help", "config"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config file {path} has unknown keys {unknown}; known keys: {sorted(known)}")
    return values


def check_args(args: argparse.Namespace) -> None:
    """Reject values that cannot work, naming the flag (before any data is built)."""
    check_model_name(args.model)
    for name in ("batch_size", "grad_accum_steps", "epochs", "lr_base_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("workers", "checkpoint_steps", "checkpoint_minutes"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a file; expected a folder for the runs (created if missing)")
    if args.experiment is not None:
        experiment = Path(args.experiment)
        if experiment.is_absolute() or ".." in experiment.parts or not experiment.parts:
            raise ValueError(f"--experiment must be a folder name inside --output (no absolute path, no '..'), "
                             f"got {args.experiment!r}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        raise ValueError(f"mixup/cutmix pair images within a batch: --batch-size must be even, got {args.batch_size}")
    if args.warmup_epochs >= args.epochs:
        raise ValueError(f"--warmup-epochs ({args.warmup_epochs}) must be less than --epochs ({args.epochs})")
