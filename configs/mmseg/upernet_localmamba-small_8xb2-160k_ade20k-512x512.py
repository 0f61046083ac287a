# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), LocalVMamba-S backbone.
# NOT an official recipe: the LocalMamba repository has no LocalVMamba segmentation config (its only UperNet config is
# for LocalVim-S). By analogy with its detection configs: mmseg's Swin-T UperNet data and schedule (linear warm-up
# 1500 iterations, then poly), AdamW lr 6e-5, weight decay 0.01 except on parameters named 'norm' (Swin's rule),
# SyncBN in the heads, drop path 0.1, the backbone with a LayerNorm on each returned stage. On one GPU keep the batch
# of 16 with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['./upernet_localmamba-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint='checkpoints/localmamba_small.safetensors')))
