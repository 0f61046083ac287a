"""The optimisation side of tools/train.py: model (DDP-wrapped), EMA, optimizer, scheduler, scaler, loss, mixup."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .distributed import DistributedContext, any_process


@dataclass
class EpochProgress:
    """How far the current epoch got: optimizer steps done, and this process's loss sum, images and seconds."""
    step: int = 0
    loss_sum: float = 0.0
    images: int = 0
    seconds: float = 0.0


class Trainer:
    """Owns everything an optimizer step touches; :meth:`state_dict` holds what resuming needs besides weights."""

    def __init__(self, model: torch.nn.Module, args, num_classes: int, steps_per_epoch: int,
                 context: DistributedContext):
        self.args = args
        self.context = context
        self.steps_per_epoch = steps_per_epoch
        self.model = model.to(context.device)
        self.ema = ModelEmaV3(self.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) \
            if args.model_ema else None
        self.ddp_model = DistributedDataParallel(self.model) if context.world_size > 1 else self.model
        self.global_batch = args.batch_size * context.world_size * args.grad_accum_steps
        self.lr = args.lr if args.lr is not None else args.lr_base * self.global_batch / args.lr_base_size
        self.optimizer = create_optimizer_v2(self.model, opt=args.opt, lr=self.lr, weight_decay=args.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs - args.warmup_epochs,
            warmup_epochs=args.warmup_epochs, warmup_prefix=True, warmup_lr=args.warmup_lr, min_lr=args.min_lr,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        use_amp = args.amp if args.amp is not None else context.device.type == "cuda"
        self.autocast_dtype = getattr(torch, args.amp_dtype) if use_amp else None  # None: no autocast
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=args.amp_dtype == "float16" and use_amp)
        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                               switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing,
                               num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif args.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.num_updates = 0

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, batches, epoch: int, progress: EpochProgress, stop_requested: Callable[[], bool],
                    checkpoint_due: Callable[[int], bool], save_checkpoint: Callable[[], None]) -> bool:
        """Run the optimizer steps of ``epoch`` from ``progress.step`` on, drawing from iterator ``batches``.

        Updates ``progress``; returns False if some process asked to stop (checked after every step, so that all
        processes stop after the same one), True when the epoch is complete. Calls ``save_checkpoint()`` after the
        steps (but the last of the epoch) where ``checkpoint_due(optimizer updates so far)`` holds on some process.
        """
        self.ddp_model.train()
        images_per_step = self.args.batch_size * self.args.grad_accum_steps
        bar = tqdm(total=self.steps_per_epoch, initial=progress.step, desc=f"epoch {epoch + 1}/{self.args.epochs}",
                   unit="step", disable=not self.context.is_main, dynamic_ncols=True)
        start = time.perf_counter() - progress.seconds
        for step in range(progress.step, self.steps_per_epoch):
            loss = self._optimizer_step(batches)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss} at epoch {epoch + 1}, step {step + 1}: lower the "
                                         f"learning rate or set --clip-grad")
            progress.step = step + 1
            progress.loss_sum += loss * images_per_step
            progress.images += images_per_step
            progress.seconds = time.perf_counter() - start
            bar.update()
            bar.set_postfix(loss=f"{progress.loss_sum / progress.images:.4f}", lr=f"{self.current_lr:.3g}",
                            img_s=f"{progress.images * self.context.world_size / progress.seconds:.0f}")
            stop, save = any_process([stop_requested(), progress.step < self.steps_per_epoch
                                      and checkpoint_due(self.num_updates)], self.context.device)
            if stop:
                bar.close()
                return False
            if save:
                save_checkpoint()
        bar.close()
        return True

    def _optimizer_step(self, batches) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns this process's mean loss."""
        accum_steps = self.args.grad_accum_steps
        loss_total = torch.zeros((), device=self.context.device)
        for micro_step in range(accum_steps):
            images, targets = next(batches)
            images = images.to(self.context.device, non_blocking=True)
            targets = targets.to(self.context.device, non_blocking=True)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            is_last = micro_step == accum_steps - 1
            skip_sync = self.ddp_model.no_sync() if self.ddp_model is not self.model and not is_last \
                else contextlib.nullcontext()
            with skip_sync:
                with torch.autocast(self.context.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    loss = self.criterion(self.ddp_model(images), targets)
                self.scaler.scale(loss / accum_steps).backward()
            loss_total += loss.detach()
        if self.args.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        self.scheduler.step_update(self.num_updates)
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        return loss_total.item() / accum_steps

    def state_dict(self) -> dict:
        """Optimizer, scheduler, scaler and update count (weights are saved separately)."""
        return dict(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict(), num_updates=self.num_updates)

    def load_state_dict(self, state: dict, model_state: dict, ema_state: dict | None) -> None:
        """Restore a :meth:`state_dict` and the weights it was saved with."""
        self.model.load_state_dict(model_state)
        if self.ema is not None:
            if ema_state is None:
                raise ValueError("the checkpoint has no EMA weights, but --model-ema is on (pass --no-model-ema)")
            self.ema.module.load_state_dict(ema_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.num_updates = state["num_updates"]
        self.scheduler.step_update(self.num_updates)
