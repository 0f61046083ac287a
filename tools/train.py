#!/usr/bin/env python3
"""Train a timm model on an ImageFolder tree, or, with no arguments, test_mamba2d on scikit-learn's digits.

    python tools/train.py                                      # the embedded default job (CPU, a few minutes)
    python tools/train.py --config configs/train/mamba2d_tiny.yaml --data-dir /data/imagenet
    torchrun --nproc-per-node 8 tools/train.py --config ... --data-dir ... --grad-accum-steps 8
    python tools/train.py --resume output/train/<run>           # continue exactly, with the run's settings

Every epoch, every --checkpoint-minutes / --checkpoint-steps inside an epoch, and on SIGTERM/SIGINT (after the
current optimizer step) the run folder gets an atomic checkpoint (see vision2d/train/checkpointing.py); every epoch
also metrics.csv and curves.png. One training process at a time writes a run folder (it holds a lock on it).
"""
from __future__ import annotations

import itertools
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import timm
import torch.distributed as dist
from timm.data import resolve_data_config

import vision2d  # noqa: F401  (registers the models with timm)
from vision2d.checkpoint import CheckpointError
from vision2d.train.checkpointing import (EMA_FILE, MODEL_FILE, MidEpochSchedule, TrainingCheckpoint,
                                          checkpoint_name, load_training_checkpoint, lock_run_folder,
                                          resolve_checkpoint_dir, save_training_checkpoint)
from vision2d.train.config import parse_args
from vision2d.train.data import (build_digits_image_folder, create_eval_loader, create_image_folder_datasets,
                                 create_train_loader)
from vision2d.train.distributed import (all_reduce_sum, any_process, gather_objects, get_rng_state,
                                        init_distributed, seed_everything, set_rng_state)
from vision2d.train.evaluation import evaluate
from vision2d.train.reporting import (METRICS_FILE, PLOT_FILE, TensorBoardLogger, plot_curves,
                                      write_metrics_csv)
from vision2d.train.trainer import EpochProgress, Trainer

# Settings that may change on --resume without a note (how to resume, and logging).
RESUME_NEUTRAL_SETTINGS = {"resume", "config", "experiment", "tensorboard", "workers", "checkpoint_minutes",
                           "checkpoint_steps"}


class StopRequest:
    """Within ``with``: SIGTERM/SIGINT are recorded instead of ending the process, so that training can checkpoint
    after the current step; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name = None
        self.previous_handlers = {}

    def __enter__(self) -> "StopRequest":
        self.previous_handlers = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.signal_name is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = init_distributed(args.device)
    try:
        return train(args, context)
    finally:
        dist.destroy_process_group()


def train(args, context) -> int:
    """The whole run; returns the exit status (128 + signal number when stopped by a signal)."""
    log = print if context.is_main else (lambda *_, **__: None)
    data_dir = Path(args.data_dir) if args.data_dir else prepare_digits(Path(args.output), context, log)
    datasets = create_image_folder_datasets(data_dir)
    class_names = list(datasets["train"].reader.class_to_idx)
    seed_everything(args.seed)  # the same initial weights on every process
    model_kwargs = {key: value for key, value in (("drop_path_rate", args.drop_path), ("drop_rate", args.drop_rate))
                    if value is not None}
    model = timm.create_model(args.model, num_classes=len(class_names), **model_kwargs)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    data_config = resolve_data_config(dict(img_size=args.img_size, crop_pct=args.crop_pct), model=model)
    train_loader = create_train_loader(datasets["train"], args, data_config, context.device)
    eval_loader = create_eval_loader(datasets["val"], data_config, args.batch_size, args.workers, context.device,
                                     distributed=True)
    steps_per_epoch = len(train_loader) // args.grad_accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{len(datasets['train'])} training images give no full optimizer step of "
                         f"{args.batch_size} x {context.world_size} processes x {args.grad_accum_steps} accumulation")
    trainer = Trainer(model, args, len(class_names), steps_per_epoch, context)

    run_dir, run_lock = open_run_dir(args, data_dir, context)  # run_lock: held until this function returns
    start_epoch, progress, history, best, resume_rng = 0, EpochProgress(), [], None, None
    if args.resume:
        checkpoint = load_training_checkpoint(args.resume, args.model)
        state = checkpoint.trainer_state
        check_resumable(checkpoint, args, class_names, trainer.global_batch, log)
        trainer.load_state_dict(state["trainer"], checkpoint.model_state, checkpoint.ema_state)
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        if state["progress"] is not None:
            progress = EpochProgress(**state["progress"])
            if state["world_size"] == context.world_size:
                resume_rng = state["rng"][context.rank]
            else:
                log(f"note: the checkpoint was saved by {state['world_size']} processes, not {context.world_size}: "
                    f"random augmentation of epoch {start_epoch + 1} will differ from the interrupted run")
        log(f"resuming {checkpoint.directory} at epoch {start_epoch + 1}, step {progress.step}")
    logger = TensorBoardLogger(run_dir / "tensorboard") if args.tensorboard and context.is_main else None
    log(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(class_names)} "
        f"classes, input {data_config['input_size']}; {len(datasets['train'])} train / {len(datasets['val'])} val "
        f"images from {data_dir}")
    log(f"global batch {trainer.global_batch} ({args.batch_size} x {context.world_size} processes x "
        f"{args.grad_accum_steps} accumulation), lr {trainer.lr:.3g}, {steps_per_epoch} steps/epoch, "
        f"{args.epochs} epochs on {context.device}; run folder {run_dir}")

    mid_epoch_schedule = MidEpochSchedule(args.checkpoint_steps, args.checkpoint_minutes)

    def save(epoch_done: int, epoch_progress: EpochProgress | None, is_best: bool) -> None:
        mid_epoch_schedule.saved()
        rng_states = gather_objects(get_rng_state())
        if not context.is_main:
            return
        trainer_state = dict(
            trainer=trainer.state_dict(), epoch=epoch_done, progress=asdict(epoch_progress) if epoch_progress else None,
            rng=rng_states, history=history, best=best, world_size=context.world_size,
            global_batch=trainer.global_batch, class_names=class_names)
        save_training_checkpoint(
            run_dir, checkpoint_name(epoch_done, epoch_progress and epoch_progress.step), args.model, len(class_names),
            data_config, model.state_dict(), trainer.ema.module.state_dict() if trainer.ema else None, trainer_state,
            vars(args), is_best)

    with StopRequest() as stop_requested:
        for epoch in range(start_epoch, args.epochs):
            batches = start_epoch_batches(train_loader, epoch, progress, resume_rng, args, context)
            if not trainer.train_epoch(batches, epoch, progress, stop_requested, mid_epoch_schedule.due,
                                       lambda: save(epoch, progress, is_best=False)):
                save(epoch, progress, is_best=False)
                return report_stop(stop_requested, run_dir, log)
            loss_sum, images = all_reduce_sum([progress.loss_sum, progress.images], context.device)
            row = dict(epoch=epoch + 1, updates=trainer.num_updates, lr=trainer.current_lr,
                       train_loss=loss_sum / images, train_images_per_s=images / progress.seconds,
                       **validation_metrics(trainer, eval_loader, len(datasets["val"]), context),
                       epoch_seconds=progress.seconds)
            history.append(row)
            top1 = row["ema_val_top1" if trainer.ema is not None else "val_top1"]
            is_best = best is None or top1 > best["top1"]
            if is_best:
                best = dict(epoch=epoch + 1, top1=top1, weights=EMA_FILE if trainer.ema is not None else MODEL_FILE)
            save(epoch + 1, None, is_best)
            if context.is_main:
                write_metrics_csv(history, run_dir / METRICS_FILE)
                plot_curves(history, run_dir / PLOT_FILE)
                if logger:
                    logger.log(row)
            remaining = (args.epochs - epoch - 1) * sum(r["epoch_seconds"] for r in history) / len(history)
            log(f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}"
                f", val top-1 {row['val_top1']:.2f}%"
                + (f", EMA top-1 {row['ema_val_top1']:.2f}%" if trainer.ema is not None else "")
                + f", {row['train_images_per_s']:.0f} img/s, ETA {format_seconds(remaining)}")
            progress, resume_rng = EpochProgress(), None
            if any_process(stop_requested(), context.device) and epoch + 1 < args.epochs:
                return report_stop(stop_requested, run_dir, log)
    if logger:
        logger.close()
    best_weights = run_dir / "best" / best["weights"]
    log(f"done: {args.epochs} epochs, {format_seconds(sum(r['epoch_seconds'] for r in history))} of training; best "
        f"val top-1 {best['top1']:.2f}% after epoch {best['epoch']}\n"
        f"  checkpoint: {best_weights}  (resumable: {run_dir / 'last'})\n"
        f"  metrics:    {run_dir / METRICS_FILE}\n"
        f"  plot:       {run_dir / PLOT_FILE}\n"
        f"  validate:   python tools/validate.py --checkpoint {best_weights} --data-dir {data_dir}")
    return 0


def validation_metrics(trainer: Trainer, eval_loader, num_images: int, context) -> dict[str, float]:
    """val_loss/top1/top5 of the model, and ema_val_* of its EMA when there is one."""
    metrics = {}
    evaluated = [("val", trainer.model)] + ([("ema_val", trainer.ema.module)] if trainer.ema is not None else [])
    for prefix, model in evaluated:
        result = evaluate(model, eval_loader, num_images, context.device, trainer.autocast_dtype,
                          show_progress=context.is_main)
        metrics.update({f"{prefix}_{key}": result[key] for key in ("loss", "top1", "top5")})
    return metrics


def prepare_digits(output: Path, context, log) -> Path:
    """Build (on the main process) and return the digits ImageFolder under ``output``."""
    if context.is_main:
        build_digits_image_folder(output)
    dist.barrier()
    data_dir = build_digits_image_folder(output)  # built: returns its path
    log(f"no --data-dir: using scikit-learn's digits as an ImageFolder at {data_dir}")
    return data_dir


def open_run_dir(args, data_dir: Path, context):
    """(run folder, its lock file on the main process, None on the others): the folder of the resumed checkpoint,
    or a new one. The main process takes the folder's lock, so that one process at a time writes it; a new run
    refuses a folder that already holds checkpoints."""
    outcome, lock = [None, None], None  # folder, error
    if context.is_main:
        try:
            run_dir = resolve_checkpoint_dir(args.resume).parent if args.resume else create_run_dir(args, data_dir)
            lock = lock_run_folder(run_dir)
            if not args.resume and (run_dir / "last").is_symlink():
                lock.close()
                raise CheckpointError(f"{run_dir} already holds checkpoints: pass --resume {run_dir} to continue it, "
                                      f"or another --experiment")
            outcome[0] = str(run_dir)
        except (CheckpointError, OSError) as error:
            outcome[1] = str(error)
    dist.broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise CheckpointError(outcome[1])
    return Path(outcome[0]), lock


def create_run_dir(args, data_dir: Path) -> Path:
    """``--output/--experiment``, or a new ``--output/<time>-<model>-<data>[-<n>]`` that no other run has."""
    output = Path(args.output)
    if args.experiment:
        (output / args.experiment).mkdir(parents=True, exist_ok=True)
        return output / args.experiment
    output.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{args.model}-{data_dir.name}"
    for number in itertools.count(1):
        run_dir = output / (stem if number == 1 else f"{stem}-{number}")
        try:
            run_dir.mkdir()  # atomic: of two runs started in the same second, one gets -2
            return run_dir
        except FileExistsError:
            continue


def check_resumable(checkpoint: TrainingCheckpoint, args, class_names: list[str], global_batch: int, log) -> None:
    """Refuse a checkpoint of another class list or global batch; note settings changed by flags."""
    state = checkpoint.trainer_state
    if state["class_names"] != class_names:
        raise CheckpointError(f"the checkpoint was trained on {len(state['class_names'])} classes "
                              f"({state['class_names'][:5]}...), the data has {len(class_names)} "
                              f"({class_names[:5]}...)")
    if state["global_batch"] != global_batch:
        raise CheckpointError(f"the checkpoint was trained with global batch {state['global_batch']}, this run has "
                              f"{global_batch}: keep batch size x processes x accumulation steps to resume exactly")
    for key, before in checkpoint.config.items():
        if key not in RESUME_NEUTRAL_SETTINGS and getattr(args, key) != before:
            log(f"note: --{key.replace('_', '-')} was {before} in the checkpoint, now {getattr(args, key)}")


def start_epoch_batches(loader, epoch: int, progress: EpochProgress, resume_rng: dict | None, args, context):
    """An iterator over the batches of ``epoch`` positioned after ``progress.step`` optimizer steps.

    Every epoch seeds all RNGs from (seed, epoch, rank) before the loader starts its workers, so an epoch's data
    order and augmentation do not depend on what ran before. Resuming mid-epoch re-reads the batches already
    trained on (without training) so the loader's RNG streams line up, then restores the saved RNG state.
    """
    seed_everything(args.seed, epoch, context.rank)
    loader.sampler.set_epoch(epoch)
    batches = iter(loader)
    for _ in range(progress.step * args.grad_accum_steps):
        next(batches)
    if resume_rng is not None:
        set_rng_state(resume_rng)
    return batches


def report_stop(stop_requested: StopRequest, run_dir: Path, log) -> int:
    log(f"stopped by {stop_requested.signal_name} after a checkpoint; continue with: python tools/train.py --resume "
        f"{run_dir}")
    return 128 + signal.Signals[stop_requested.signal_name].value


def format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{seconds:02d}s" if minutes >= 60 else f"{minutes}m{seconds:02d}s"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
