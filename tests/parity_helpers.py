"""Helpers shared by the family tests: the relative error they compare with and saving a checkpoint to a path."""
from pathlib import Path

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def save(obj, path: Path) -> str:
    """torch.save(obj, path); returns the path as a string (for pretrained_cfg_overlay / init_cfg)."""
    torch.save(obj, path)
    return str(path)
