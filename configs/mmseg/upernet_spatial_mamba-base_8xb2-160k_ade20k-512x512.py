# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), Spatial-Mamba-B backbone.
# Official recipe (github.com/EdwardChasel/Spatial-Mamba, segmentation/configs/spatialmamba/upernet_spatialmamba_4xb4-160k_ade20k-512x512_base.py, published 51.8 mIoU (52.6 multi-scale)):
# mmseg's Swin-T UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5, weight decay
# 0.01 except on parameters named 'norm' (Swin's rule), SyncBN in the heads, drop path 0.5; the backbone is the
# official Backbone_SpatialMamba (a LayerNorm on each returned stage). On one GPU keep the batch of 16 with --cfg-options
# train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2; multi-scale + flip testing with tools/mm_test.py --tta.
_base_ = ['./upernet_spatial_mamba-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='checkpoints/spatial_mamba_base.safetensors')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
