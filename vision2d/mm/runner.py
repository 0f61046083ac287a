"""Command-line handling shared by tools/mm_train.py and tools/mm_test.py, as mmdet's and mmseg's own tools do it."""
import argparse
import functools
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.logging import HistoryBuffer
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ..checkpoint import CheckpointError, is_weights_only_refusal, untrusted_pickle_message


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """The config path, --work-dir, --cfg-options and the distributed launcher arguments."""
    parser.add_argument("config", help="mmdet or mmseg config file, e.g. configs/mmdet/...py")
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config entries, e.g. model.backbone.arch=nano train_dataloader.batch_size=4")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher for distributed runs (pytorch with torchrun)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace) -> Config:
    """The config of ``args.config`` with the command-line overrides applied."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / Path(args.config).stem)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """mmengine's Runner, or the config's own ``runner_type``, loading checkpoints weights-only.

    The Runner loads checkpoints (``load_from``, resuming) through its ``load_checkpoint``, whose ``torch.load``
    leaves ``weights_only`` at torch's default (True since torch 2.6). Around that method only, the types mmengine's
    own checkpoints hold are allowed (:func:`mmengine_checkpoint_globals`); any other pickled object is refused with
    a CheckpointError saying how to proceed if the file is trusted.
    """
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    runner.load_checkpoint = _loading_weights_only(runner.load_checkpoint)
    return runner


def mmengine_checkpoint_globals() -> list:
    """The non-tensor globals of a checkpoint written by mmengine's Runner: numpy arrays and scalars of numeric
    dtypes (message hub statistics), mmengine's HistoryBuffer, and the lookup of a HistoryBuffer's statistics
    methods by name, which pickle records as ``getattr`` and which is allowed for exactly those methods."""
    array_reconstruct = np.zeros(0).__reduce__()[0]
    scalar_reconstruct = np.float64(0).__reduce__()[0]
    numeric_dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefd"}  # classes of numpy's bool/int/float dtypes
    return [np.ndarray, np.dtype, *numeric_dtypes, array_reconstruct, scalar_reconstruct, HistoryBuffer,
            (_history_buffer_method, "builtins.getattr")]


def _history_buffer_method(owner, name: str):
    """``getattr(owner, name)`` for HistoryBuffer's registered statistics methods only."""
    if owner is not HistoryBuffer or name not in {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}:
        raise pickle.UnpicklingError(f"Unsupported global: getattr({owner!r}, {name!r}) is not a HistoryBuffer "
                                     f"statistics method; only add_safe_globals types are loaded")
    return getattr(owner, name)


def _loading_weights_only(load_checkpoint):
    @functools.wraps(load_checkpoint)
    def load(filename, *args, **kwargs):
        try:
            with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
                return load_checkpoint(filename, *args, **kwargs)
        except pickle.UnpicklingError as error:
            if not is_weights_only_refusal(error):
                raise
            raise CheckpointError(untrusted_pickle_message(filename, error) + ". For a checkpoint of mmengine's "
                                  "Runner that you trust, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment of "
                                  "this one command loads it in full") from error
    return load
