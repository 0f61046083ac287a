# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a Spatial-Mamba-S backbone.
# Official recipe (github.com/EdwardChasel/Spatial-Mamba, detection/configs/spatialmamba/mask_rcnn_spatialmamba_fpn_coco_small.py, published 49.2 box AP / 44.0 mask AP):
# mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except on parameters named 'norm'
# (Swin's rule), no gradient clipping, drop path 0.3; the backbone is the official Backbone_SpatialMamba (a LayerNorm on
# each returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='SpatialMambaBackbone',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatial_mamba_small.safetensors')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty for Spatial-Mamba)
    paramwise_cfg=dict(custom_keys={
        # The official blocks name their LayerNorms ln_1 / ln_2, so Swin's 'norm' rule above decays them there:
        # keep that here (out_norm, the BatchNorms and the output norms stay without decay, as officially).
        'norm1': dict(decay_mult=1.0),
        'norm2': dict(decay_mult=1.0)}))
