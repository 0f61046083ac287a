# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a Spatial-Mamba-B backbone.
# Official recipe (github.com/EdwardChasel/Spatial-Mamba, detection/configs/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_base.py, published 50.4 box AP / 45.1 mask AP):
# mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on parameters named 'norm'
# (Swin's rule), no gradient clipping, drop path 0.5; the backbone is the official Backbone_SpatialMamba (a LayerNorm on
# each returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_spatial_mamba-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='checkpoints/spatial_mamba_base.safetensors')),
    neck=dict(in_channels=[96, 192, 384, 768]))
