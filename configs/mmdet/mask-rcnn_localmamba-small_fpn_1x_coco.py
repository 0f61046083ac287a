# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a LocalVMamba-S backbone.
# Official recipe (github.com/hunto/LocalMamba, detection/configs/local_mamba/mask_rcnn_local_vssm_small_fpn_coco.py; the
# README publishes no AP yet): mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except
# on parameters named 'norm' (Swin's rule), AMP (the official AmpOptimWrapper: train with tools/mm_train.py --amp),
# drop path 0.1 (the config sets none: VSSM's default); the backbone is the official Backbone_LocalVSSM (a LayerNorm on
# each returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_localmamba-tiny_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint='checkpoints/localmamba_small.safetensors')))
