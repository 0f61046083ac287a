# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with an MSVMamba-N backbone.
# Official recipe (github.com/YuHengsss/MSVMamba, detection/configs/ms_vssm/mask_rcnn_ms_vssm_fpn_coco_nano.py,
# no AP published): mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on
# parameters named 'norm' (Swin's rule), drop path 0.1 (the config sets none: VSSM's default); the backbone is the
# official MM_VSSM (a LayerNorm on each returned stage). On one GPU keep the batch of 16 with
# --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_msvmamba-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='nano', init_cfg=dict(checkpoint='checkpoints/msvmamba_nano.safetensors')),
    neck=dict(in_channels=[48, 96, 192, 384]))
