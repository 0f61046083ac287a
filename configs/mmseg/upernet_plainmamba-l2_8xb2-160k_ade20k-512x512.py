# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), PlainMamba-L2 backbone.
# Official recipe (github.com/ChenhongyiYang/PlainMamba, downstream/mmsegmentation/plain_mamba_seg_configs/l2_upernet.py,
# published 46.8 mIoU): the plain model's blocks (5, 11, 17, 23) (all at stride 16; a LayerNorm on each, the last one the
# final norm) straight into UperNet, no neck; AdamW lr 6e-5, weight decay 0.01 except on parameters named 'norm' and on
# pos_embed / A_log / D / direction_Bs, linear warm-up 1500 iterations then poly, SyncBN in the heads, drop path 0.2.
# Pretrained: the ImageNet classifier (checkpoints/plainmamba_l2.safetensors, or the official l2.pth directly).
# On one GPU keep the batch of 16 with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['./upernet_plainmamba-l1_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='l2',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/plainmamba_l2.safetensors')),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
