# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), VMamba-B[s2l15] backbone.
# Official recipe (github.com/MzeroMiko/VMamba, segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_base.py, published 51.0 mIoU (51.6 multi-scale)):
# mmseg's Swin UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5, weight decay
# 0.01 except on parameters named 'norm' (Swin's rule), SyncBN in the heads, drop path 0.6; the backbone is the
# official MM_VSSM (a LayerNorm on each returned stage). On one GPU keep the batch of 16 with --cfg-options
# train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2; multi-scale + flip testing with tools/mm_test.py --tta.
_base_ = ['./upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='checkpoints/vmamba_base.safetensors')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
