# Mamba2D-S variant of mask-rcnn_mamba2d-tiny_fpn_1x_coco.py (same recipe, drop path 0.2).
_base_ = ['./mask-rcnn_mamba2d-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/mamba2d_small.safetensors')),
    neck=dict(in_channels=[96, 192, 384, 576]))
