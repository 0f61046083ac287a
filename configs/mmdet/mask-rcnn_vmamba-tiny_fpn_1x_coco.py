# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a VMamba-T[s1l8] backbone.
# Official recipe (github.com/MzeroMiko/VMamba, detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny.py, published 47.3 box AP / 42.7 mask AP):
# mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on parameters named 'norm'
# (Swin's rule), no gradient clipping, drop path 0.2; the backbone is the official MM_VSSM (a LayerNorm on each
# returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='VMambaBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vmamba_tiny.safetensors')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty for VMamba)
    paramwise_cfg=dict(custom_keys={
        # The official backbone names its stem and downsample LayerNorms by index (patch_embed.2/.7,
        # downsample.3), so Swin's 'norm' rule above decays them there: keep that here.
        'stem.norm': dict(decay_mult=1.0),
        'downsample.norm': dict(decay_mult=1.0)}))
