"""Command-line handling shared by tools/mm_train.py and tools/mm_test.py, as mmdet's and mmseg's own tools do it."""
import argparse
import os
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


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
    """mmengine's Runner, or the config's own ``runner_type``, able to load the checkpoints it writes.

    mmengine 0.10 reads its checkpoints (which pickle numpy and mmengine objects) with ``torch.load``'s default, and
    that default is ``weights_only=True`` since torch 2.6; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD restores full unpickling
    for the calls that leave ``weights_only`` unset (timm and vision2d set it explicitly). Load trusted files only.
    """
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
