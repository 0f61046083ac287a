# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a VMamba-B[s2l15] backbone.
# Official recipe (github.com/MzeroMiko/VMamba, detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_base.py, published 49.2 box AP / 44.1 mask AP):
# mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on parameters named 'norm'
# (Swin's rule), no gradient clipping, drop path 0.6; the backbone is the official MM_VSSM (a LayerNorm on each
# returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_vmamba-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/vmamba_base.safetensors')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
