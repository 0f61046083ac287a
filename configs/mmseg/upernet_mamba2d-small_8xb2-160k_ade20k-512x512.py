# Mamba2D-S variant of upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py (same recipe, drop path 0.2).
_base_ = ['./upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/mamba2d_small.safetensors')),
    decode_head=dict(in_channels=[96, 192, 384, 576]),
    auxiliary_head=dict(in_channels=384))
