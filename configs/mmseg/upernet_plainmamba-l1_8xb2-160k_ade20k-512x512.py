# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (8 GPUs x 2), PlainMamba-L1 backbone.
# Official recipe (github.com/ChenhongyiYang/PlainMamba, downstream/mmsegmentation/plain_mamba_seg_configs/l1_upernet.py,
# published 44.1 mIoU): the plain model's blocks (5, 11, 17, 23) (all at stride 16; a LayerNorm on each, the last one the
# final norm) straight into UperNet, no neck; AdamW lr 6e-5, weight decay 0.01 except on parameters named 'norm' and on
# pos_embed / A_log / D / direction_Bs, linear warm-up 1500 iterations then poly, SyncBN in the heads, drop path 0.1.
# Pretrained: the ImageNet classifier (checkpoints/plainmamba_l1.safetensors, or the official l1.pth directly).
# On one GPU keep the batch of 16 with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='PlainMambaBackbone',
        arch='l1',
        out_indices=(5, 11, 17, 23),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/plainmamba_l1.safetensors')),
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192, in_index=3))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay(): pos_embed, A_log, D, direction_Bs
    paramwise_cfg=dict(custom_keys={
        # the official final norm is named ln1, so Swin's 'norm' rule above does not exempt it: decay it here too
        'model.model.norm.': dict(decay_mult=1.0)}))
