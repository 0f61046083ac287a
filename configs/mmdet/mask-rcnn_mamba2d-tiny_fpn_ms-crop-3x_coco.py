# Mask R-CNN + FPN, 3x schedule (36 epochs) with multi-scale training and random crops on COCO, Mamba2D-T backbone.
# Same recipe as the 1x config (see there); the data pipeline and schedule are mmdet's Swin-T ms-crop-3x ones.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']

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
