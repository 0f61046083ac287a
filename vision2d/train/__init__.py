"""Helpers of tools/train.py and tools/validate.py: configuration, data, distributed set-up, the trainer, atomic
training checkpoints, evaluation and metric reports. Nothing here imports mmengine."""
