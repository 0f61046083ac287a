# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a GrootV-B backbone.
# Recipe of the GrootVL paper (arXiv:2406.02395; the official repository publishes no detection configs): mmdet's
# Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on 1-D parameters (norms, biases, D),
# drop path 0.5 as the classifier. On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_grootv-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='checkpoints/grootv_base.safetensors')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
