# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images (4 GPUs x 4), MSVMamba-M backbone.
# Official recipe (github.com/YuHengsss/MSVMamba, segmentation/configs/ms_vssm/upernet_ms_vssm_4xb4-160k_ade20k-512x512_micro.py,
# published 45.1 mIoU (45.4 multi-scale)): mmseg's Swin-T UperNet data and schedule (linear warm-up 1500 iterations, then poly), AdamW lr 6e-5,
# weight decay 0.01 except on parameters named 'norm' (Swin's rule), SyncBN in the heads, drop path 0.2; the backbone
# is the official MM_VSSM (a LayerNorm on each returned stage). The official batch is 4 GPUs x 4; 8 GPUs x 2 here gives
# the same 16. On one GPU keep it with --cfg-options train_dataloader.batch_size=8 optim_wrapper.accumulative_counts=2.
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='MSVMambaBackbone',
        arch='micro',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/msvmamba_micro.safetensors')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(
    constructor='TimmNoWeightDecayConstructor',  # plus the timm model's no_weight_decay() (empty here)
    paramwise_cfg=dict(custom_keys={
        # The official backbone names its stem LayerNorm by index (patch_embed.2), so Swin's 'norm' rule above
        # decays it there: keep that here.
        'stem.norm': dict(decay_mult=1.0)}))
