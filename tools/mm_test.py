#!/usr/bin/env python3
"""Evaluate a trained mmdet or mmseg model on its config's test set with mmengine's Runner (like mmdet's and
mmseg's tools/test.py).

    python tools/mm_test.py configs/mmdet/mask-rcnn_mamba2d-tiny_fpn_1x_coco.py work_dirs/.../epoch_12.pth
    python tools/mm_test.py configs/mmseg/upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py CKPT --tta

Needs the OpenMMLab stack: python tools/install_openmmlab.py (docs/openmmlab.md).
"""
import argparse
import sys

from vision2d.checkpoint import CheckpointError
from vision2d.mm.runner import add_runner_arguments, build_runner, load_config


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_arguments(parser)
    parser.add_argument("checkpoint", help="checkpoint of the whole detector / segmentor written by mm_train.py")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (the config's tta_pipeline)")
    args = parser.parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if "tta_pipeline" not in cfg or "tta_model" not in cfg:
            parser.error(f"--tta needs tta_pipeline and tta_model in {args.config}")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    build_runner(cfg).test()


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:  # e.g. a checkpoint that weights-only loading refuses
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
