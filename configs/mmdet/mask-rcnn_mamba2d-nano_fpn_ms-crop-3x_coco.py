# Mamba2D-N variant of mask-rcnn_mamba2d-tiny_fpn_ms-crop-3x_coco.py (same recipe, drop path 0.175).
_base_ = ['./mask-rcnn_mamba2d-tiny_fpn_ms-crop-3x_coco.py']

model = dict(
    backbone=dict(arch='nano', init_cfg=dict(checkpoint='checkpoints/mamba2d_nano.safetensors')),
    neck=dict(in_channels=[32, 64, 160, 256]))
