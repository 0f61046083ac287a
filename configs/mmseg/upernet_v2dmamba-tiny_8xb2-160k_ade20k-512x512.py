# UperNet + auxiliary FCN head on ADE20K, 512x512 crops, 160k iterations of 16 images, 2DVMamba-T backbone.
# Official recipe (github.com/AtlasAnalyticsLab/2DMamba, 2DVMamba/segmentation/configs/vssm_2d/
# upernet_vssm_2d_4xb4-160k_ade20k-512x512_tiny.py, 4 GPUs x 4 images): mmseg's Swin-T UperNet 160k config with the
# official MM_VSSM (the tiny classifier's arguments with use_v2d, a LayerNorm on each returned stage), drop path 0.2:
# the same recipe as our VMamba-T config, on which this file builds, with the 2DVMamba backbone. No official weights
# exist: initialise from a classifier you trained (tools/train.py --config configs/train/v2dmamba_tiny.yaml) or from
# an official training checkpoint converted by tools/convert_checkpoint.py.
_base_ = ['./upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        type='V2DMambaBackbone',
        arch='tiny',
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/v2dmamba_tiny.safetensors')))
