#!/usr/bin/env python3
"""Evaluate a model's weights on an ImageFolder split: top-1/top-5 accuracy, loss and images/s.

    python tools/validate.py --checkpoint checkpoints/test_mamba2d_digits.safetensors \
        --data-dir output/train/digits-32px
    python tools/validate.py --model mamba2d_tiny --checkpoint M2D-T-backbone.ckpt --data-dir /data/imagenet --amp

vision2d weight files name their model, class count and data config; other files (official Mamba2D checkpoints, any
timm checkpoint) need --model and go through the model's checkpoint filter. Images get the eval transforms (resize,
centre crop) of the resulting pretrained cfg, unless --img-size/--crop-pct say otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from timm.data import resolve_data_config

import vision2d  # noqa: F401  (registers the models with timm)
from vision2d.checkpoint import CheckpointError, create_model_from_weights
from vision2d.train.data import create_eval_loader, create_image_folder_datasets
from vision2d.train.evaluation import evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="weight file: vision2d .safetensors, or any timm/official")
    parser.add_argument("--model", default=None, help="timm model name; default: the one named in the weight file")
    parser.add_argument("--data-dir", required=True, help="ImageFolder root holding <split>/<class>/<image>")
    parser.add_argument("--split", default="val", help="folder of --data-dir to evaluate")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes")
    parser.add_argument("--img-size", type=int, default=None, help="input size; default: from the pretrained cfg")
    parser.add_argument("--crop-pct", type=float, default=None, help="centre crop fraction; default: pretrained cfg")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--device", default=None, help="cpu or cuda; default: cuda when available")
    return parser


def validate(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv``, evaluate, print and return the metrics (loss, top1, top5, images_per_s)."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = create_image_folder_datasets(args.data_dir, splits=(args.split,))[args.split]
    model = create_model_from_weights(args.checkpoint, args.model).to(device)
    num_classes = len(dataset.reader.class_to_idx)
    if model.num_classes != num_classes:
        raise ValueError(f"the weights classify {model.num_classes} classes, but {args.data_dir}/{args.split} has "
                         f"{num_classes} class folders")
    data_config = resolve_data_config(dict(img_size=args.img_size, crop_pct=args.crop_pct), model=model)
    loader = create_eval_loader(dataset, data_config, args.batch_size, args.workers, device, distributed=False)
    metrics = evaluate(model, loader, len(dataset), device, torch.bfloat16 if args.amp else None)
    print(f"{model.pretrained_cfg['architecture']} on {len(dataset)} images of {args.data_dir}/{args.split} "
          f"(input {data_config['input_size']}, crop_pct {data_config['crop_pct']}): top-1 {metrics['top1']:.2f}%, "
          f"top-5 {metrics['top5']:.2f}%, loss {metrics['loss']:.4f}, {metrics['images_per_s']:.0f} img/s")
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    try:
        validate()
    except (CheckpointError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
