# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), Spatial-Mamba-S backbone.
# Official recipe (github.com/EdwardChasel/Spatial-Mamba, segmentation/configs/spatialmamba/upernet_spatialmamba_4xb4-160k_ade20k-512x512_small.py, published 50.6 mIoU (51.4 multi-scale)):
# mmseg's Swin-T UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5, weight decay
# 0.01 except on parameters named 'norm' (Swin's rule), SyncBN in the heads, drop path 0.3; the backbone is the
# official Backbone_SpatialMamba (a LayerNorm on each returned stage). On one GPU keep the batch of 16 with --cfg-options
# train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2; multi-scale + flip testing with tools/mm_test.py --tta.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SpatialMambaBackbone',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/spatial_mamba_small.safetensors')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty for Spatial-Mamba)
    paramwise_cfg=dict(custom_keys={
        # The official blocks name their LayerNorms ln_1 / ln_2, so Swin's 'norm' rule above decays them there:
        # keep that here (out_norm, the BatchNorms and the output norms stay without decay, as officially).
        'norm1': dict(decay_mult=1.0),
        'norm2': dict(decay_mult=1.0)}))
