# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a Mamba2D-T backbone.
# Recipe of the Mamba2D paper (arXiv:2412.16146; official configs at github.com/cocoalex00/Mamba2D): mmdet's Swin-T
# Mask R-CNN schedule and data, AdamW lr 1e-4 with weight decay 0.05 except on 1-D parameters (norms, biases,
# scales, D) and the SSM's A logs, gradient clipping at norm 1.0, GroupNorm in the FPN, drop path 0.175.
# On one GPU keep the recipe's batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='Mamba2DBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.175,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mamba2d_tiny.safetensors')),
    neck=dict(in_channels=[64, 128, 320, 512], norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='TimmNoWeightDecayConstructor',  # no decay on what the timm model's no_weight_decay() names (A logs)
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))
