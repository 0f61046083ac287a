# Mask R-CNN + FPN, 1x schedule (12 epochs, 16 images per iteration as 8 GPUs x 2) on COCO with a PlainMamba-L2 backbone in
# the official ViT-Adapter (PlainMambaAdapter: multi-scale features at strides 4-32 from the plain stride-16 model).
# Official recipe (github.com/ChenhongyiYang/PlainMamba, downstream/mmdetection/plain_mamba_det_configs/maskrcnn/
# l2_maskrcnn_1x.py, published 46.0 box AP): 1333x800 resize + flip, FPN and a 4-conv 1-fc box head with SyncBN, AdamW
# lr 1e-4, weight decay 0.05 except on norms, biases, pos / level embeddings, A_log, D and direction_Bs, no gradient
# clipping, drop path 0.2; the adapter's BatchNorms become SyncBN with sync_bn='torch' when distributed.
# Pretrained: the ImageNet classifier (checkpoints/plainmamba_l2.safetensors or the official l2.pth; the adapter starts
# from its init), or an official detector checkpoint to load everything.
# On one GPU keep the batch of 16 with --cfg-options optim_wrapper.accumulative_counts=8.
_base_ = ['./mask-rcnn_plainmamba-l1_adapter_1x_coco.py']

model = dict(
    backbone=dict(
        arch='l2',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/plainmamba_l2.safetensors')),
    neck=dict(in_channels=[384, 384, 384, 384]))
