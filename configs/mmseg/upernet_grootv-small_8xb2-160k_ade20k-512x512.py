# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), GrootV-S backbone.
# Recipe of the GrootVL paper (arXiv:2406.02395; the official repository publishes no segmentation configs): mmseg's
# Swin UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5, weight decay 0.01 except
# on 1-D parameters, SyncBN in the heads, drop path 0.3 as the classifier. On one GPU keep the batch of 16 with
# --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['./upernet_grootv-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='checkpoints/grootv_small.safetensors')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
