# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a PlainMamba-L3 backbone in
# the official ViT-Adapter (PlainMambaAdapter: multi-scale features at strides 4-32 from the plain stride-16 model).
# Official recipe (github.com/ChenhongyiYang/PlainMamba, downstream/mmdetection/plain_mamba_det_configs/maskrcnn/
# l3_maskrcnn_1x.py, published 46.8 box AP): 1333x800 resize + flip, FPN and a 4-conv 1-fc box head with SyncBN, AdamW
# lr 1e-4, weight decay 0.05 except on norms, biases, pos / level embeddings, A_log, D and direction_Bs, no gradient
# clipping, drop path 0.3; the adapter's BatchNorms become SyncBN with sync_bn='torch' when distributed.
# Pretrained: the ImageNet classifier (checkpoints/plainmamba_l3.safetensors or the official l3.pth; the adapter starts
# from its init), or an official detector checkpoint to load everything.
# On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']

custom_imports = dict(imports=['vision2d.mm'], allow_failed_imports=False)
sync_bn = 'torch'

model = dict(
    backbone=dict(
        _delete_=True,
        type='PlainMambaAdapter',
        arch='l3',  # official deform_num_heads=8, interaction_indexes=[[0, 8], [9, 17], [18, 26], [27, 35]]
        conv_inplane=64,
        n_points=4,
        cffn_ratio=0.25,
        deform_ratio=1.0,
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/plainmamba_l3.safetensors')),
    neck=dict(in_channels=[448, 448, 448, 448], norm_cfg=dict(type='SyncBN', requires_grad=True)),
    roi_head=dict(bbox_head=dict(
        _delete_=True,
        type='Shared4Conv1FCBBoxHead',
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        in_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=80,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_class_agnostic=False,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0))))

optim_wrapper = dict(
    paramwise_cfg=dict(_delete_=True, custom_keys={
        'level_embed': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
        'bias': dict(decay_mult=0.0),
        '.A_log': dict(decay_mult=0.0),
        '.D': dict(decay_mult=0.0),
        '.direction_Bs': dict(decay_mult=0.0)}))
