# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), Mamba2D-T backbone.
# Recipe of the Mamba2D paper (arXiv:2412.16146; official configs at github.com/cocoalex00/Mamba2D): mmseg's Swin-T
# UperNet data and poly schedule, AdamW lr 6e-5 with weight decay 0.05 except on 1-D parameters (norms, biases,
# scales, D) and the SSM's A logs, gradient clipping at norm 1.0, SyncBN in the heads, drop path 0.175.
# On one GPU keep the recipe's batch of 16 with --cfg-options train_dataloader.batch_size=8
# optim_wrapper.accumulative_counts=2; multi-scale + flip testing with tools/mm_test.py --tta.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='Mamba2DBackbone',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.175,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/mamba2d_tiny.safetensors')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='TimmNoWeightDecayConstructor',  # no decay on what the timm model's no_weight_decay() names (A logs)
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))
