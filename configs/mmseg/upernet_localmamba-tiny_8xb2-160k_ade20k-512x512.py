# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), LocalVMamba-T backbone.
# NOT an official recipe: the LocalMamba repository has no LocalVMamba segmentation config (its only UperNet config is
# for LocalVim-S). By analogy with its detection configs: mmseg's Swin-T UperNet data and schedule (linear warm-up
# 1500 iterations, then poly), AdamW lr 6e-5, weight decay 0.01 except on parameters named 'norm' (Swin's rule),
# SyncBN in the heads, drop path 0.1, the backbone with a LayerNorm on each returned stage. On one GPU keep the batch
# of 16 with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='LocalMambaBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/localmamba_tiny.safetensors')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty here)
    paramwise_cfg=dict(custom_keys={
        # The official backbone names its stem LayerNorm by index (patch_embed.2), so Swin's 'norm' rule above
        # decays it there: keep that here.
        'stem.norm': dict(decay_mult=1.0)}))
