# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (4 GPUs x 4), MSVMamba-N backbone.
# Official recipe (github.com/YuHengsss/MSVMamba, segmentation/configs/ms_vssm/upernet_ms_vssm_4xb4-160k_ade20k-512x512_nano.py,
# no mIoU published): mmseg's Swin-T UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5,
# weight decay 0.01 except on parameters named 'norm' (Swin's rule), SyncBN in the heads, drop path 0.2; the backbone
# is the official MM_VSSM (a LayerNorm on each returned stage). The official batch is 4 GPUs x 4; 8 GPUs x 2 here gives
# the same 16. On one GPU keep it with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['./upernet_msvmamba-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='nano', init_cfg=dict(checkpoint='checkpoints/msvmamba_nano.safetensors')),
    decode_head=dict(in_channels=[48, 96, 192, 384]),
    auxiliary_head=dict(in_channels=192))
