# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a LocalVMamba-T backbone.
# Official recipe (github.com/hunto/LocalMamba, detection/configs/local_mamba/mask_rcnn_local_vssm_tiny_fpn_coco.py; the
# README publishes no AP yet): mmdet's Swin-T Mask R-CNN 1x schedule and data, AdamW lr 1e-4, weight decay 0.05 except
# on parameters named 'norm' (Swin's rule), AMP (the official AmpOptimWrapper: train with tools/mm_train.py --amp),
# drop path 0.1 (the config sets none: VSSM's default); the backbone is the official Backbone_LocalVSSM (a LayerNorm on
# each returned stage). On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='LocalMambaBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localmamba_tiny.safetensors')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty here)
    paramwise_cfg=dict(custom_keys={
        # The official backbone names its stem LayerNorm by index (patch_embed.2), so Swin's 'norm' rule above
        # decays it there: keep that here.
        'stem.norm': dict(decay_mult=1.0)}))
