# Mamba2D-N variant of upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py (same recipe, drop path 0.175).
_base_ = ['./upernet_mamba2d-tiny_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='nano', init_cfg=dict(checkpoint='checkpoints/mamba2d_nano.safetensors')),
    decode_head=dict(in_channels=[32, 64, 160, 256]),
    auxiliary_head=dict(in_channels=160))
