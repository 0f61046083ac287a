#!/usr/bin/env python3
"""Train an mmdet or mmseg model from a config with mmengine's Runner (like mmdet's and mmseg's tools/train.py).

    python tools/mm_train.py configs/mmdet/mask-rcnn_mamba2d-tiny_fpn_1x_coco.py
    torchrun --nproc-per-node 8 tools/mm_train.py configs/mmseg/upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py \
        --launcher pytorch
    python tools/mm_train.py CONFIG --resume                     # continue from the work dir's last checkpoint

Needs the OpenMMLab stack: python tools/install_openmmlab.py (docs/openmmlab.md).
"""
import argparse
import sys

from vision2d.checkpoint import CheckpointError
from vision2d.mm.runner import add_runner_arguments, build_runner, load_config


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_arguments(parser)
    parser.add_argument("--amp", action="store_true", help="mixed precision training (AmpOptimWrapper)")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale the learning rate by the actual batch size over auto_scale_lr.base_batch_size")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="resume from CHECKPOINT, or without a value from the work dir's last checkpoint")
    args = parser.parse_args()
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == "auto" else args.resume
    build_runner(cfg).train()


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:  # e.g. a checkpoint that weights-only loading refuses
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
