"""Classification evaluation shared by tools/train.py and tools/validate.py: loss, top-1/top-5 and images/s."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .data import eval_sample_mask
from .distributed import all_reduce_sum


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, num_samples: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, show_progress: bool = True) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``top1``/``top5`` accuracy (%) and ``images_per_s`` over ``num_samples`` images.

    With an initialised process group, each process evaluates its share of a timm eval loader (images repeated to pad
    the shares are not counted) and the sums are reduced, so every process returns the metrics of the whole set.
    """
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model.eval()
    loss_sum = top1_sum = top5_sum = counted = 0.0
    seen = 0
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc="eval", leave=False, disable=not show_progress):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        mask = eval_sample_mask(seen, len(targets), rank, world_size, num_samples).to(device)
        seen += len(targets)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        top_classes = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top_classes == targets[:, None]
        loss_sum += losses[mask].sum().item()
        top1_sum += hits[mask, :1].any(dim=1).sum().item()
        top5_sum += hits[mask].any(dim=1).sum().item()
        counted += mask.sum().item()
    seconds = time.perf_counter() - start
    if dist.is_initialized():
        loss_sum, top1_sum, top5_sum, counted = all_reduce_sum([loss_sum, top1_sum, top5_sum, counted], device)
    if counted != num_samples:
        raise RuntimeError(f"evaluated {counted:.0f} images, expected {num_samples}")
    return dict(loss=loss_sum / counted, top1=100 * top1_sum / counted, top5=100 * top5_sum / counted,
                images_per_s=counted / seconds)
