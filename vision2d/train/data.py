"""Data for tools/train.py and tools/validate.py: ImageFolder checks, the embedded digits data set, timm loaders."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment, create_dataset, create_loader
from timm.data.readers.img_extensions import get_img_extensions

DIGITS_IMAGE_SIZE = 32
def image_folder_layout(splits: tuple[str, ...]) -> str:
    """The folders an ImageFolder tree of ``splits`` needs, for error messages."""
    return " and ".join(f"<data-dir>/{split}/<class>/<image>" for split in splits)


def posterize_keeping_zero_bits(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's RandAugment posterize, with 0 bits giving a black image as older Pillow did.

    RandAugment 'inc1' (PosterizeIncreasing) keeps 0 bits at magnitude 10, about 2% of the draws of m9-mstd0.5;
    Pillow 13 refuses 0 bits with a ValueError, which would stop a training run with the paper's recipe.
    """
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep, **kwargs)


timm_posterize = auto_augment.posterize
auto_augment.NAME_TO_OP.update({name: posterize_keeping_zero_bits for name, op in auto_augment.NAME_TO_OP.items()
                                if op is timm_posterize})


def build_digits_image_folder(output_dir: str | os.PathLike) -> Path:
    """scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes) as an ImageFolder of 32x32 RGB PNGs.

    The split is 80/20 per class with a fixed seed. It is written once to ``<output_dir>/digits-32px/{train,val}/
    <digit>/<index>.png``, in a temporary folder renamed when complete, and reused afterwards.
    """
    root = Path(output_dir) / f"digits-{DIGITS_IMAGE_SIZE}px"
    if root.is_dir():
        return root
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    splits = dict(zip(("train", "val"), train_test_split(indices, test_size=0.2, stratify=digits.target,
                                                          random_state=0)))
    temp_root = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    for split, split_indices in splits.items():
        for index in split_indices:
            class_dir = temp_root / split / str(digits.target[index])
            class_dir.mkdir(parents=True, exist_ok=True)
            grey = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)  # pixel values are 0..16
            image = Image.fromarray(grey).resize((DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.BICUBIC)
            image.convert("RGB").save(class_dir / f"{index:04d}.png")
    try:
        os.rename(temp_root, root)
    except OSError:  # built meanwhile by another process: keep that copy
        shutil.rmtree(temp_root)
        if not root.is_dir():
            raise
    return root


def check_image_folder(data_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Path]:
    """The split folders of an ImageFolder tree; ValueError naming what is missing if it is not one."""
    data_dir, layout = Path(data_dir), image_folder_layout(splits)
    if not data_dir.exists():
        raise ValueError(f"data dir {data_dir} does not exist; expected {layout}")
    if not data_dir.is_dir():
        raise ValueError(f"data dir {data_dir} is not a folder; expected {layout}")
    extensions = get_img_extensions()
    split_dirs = {}
    for split in splits:
        split_dir = data_dir / split
        if not split_dir.is_dir():
            raise ValueError(f"data dir {data_dir} has no '{split}' folder; expected {layout}")
        entries = list(split_dir.iterdir())
        if not any(entry.is_dir() for entry in entries):
            raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
        loose_images = [entry.name for entry in entries if entry.is_file() and entry.suffix.lower() in extensions]
        if loose_images:
            raise ValueError(f"{split_dir} holds images outside class folders ({', '.join(loose_images[:3])}...); "
                             f"expected {split_dir}/<class>/<image>")
        split_dirs[split] = split_dir
    return split_dirs


def create_image_folder_datasets(data_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """timm ImageFolder datasets of the given splits, checked to share one class list."""
    datasets = {}
    for split, split_dir in check_image_folder(data_dir, splits).items():
        try:
            datasets[split] = create_dataset("", root=str(split_dir), split=split, search_split=False)
        except RuntimeError as error:  # timm: "Found 0 images in subfolders of ..."
            raise ValueError(f"{split_dir}: {error}") from error
    class_lists = {split: list(dataset.reader.class_to_idx) for split, dataset in datasets.items()}
    reference_split, reference_classes = next(iter(class_lists.items()))
    for split, classes in class_lists.items():
        if classes != reference_classes:
            differing = sorted(set(classes) ^ set(reference_classes))
            raise ValueError(f"{data_dir}: classes of '{split}' differ from those of '{reference_split}' "
                             f"(with images in one split only: {differing[:10]})")
    return datasets


def create_train_loader(dataset, args, data_config: dict, device: torch.device):
    """timm training loader with the augmentation of ``args``; a DistributedSampler shuffles with ``args.seed``."""
    loader = create_loader(
        dataset, input_size=data_config["input_size"], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, scale=tuple(args.scale),
        ratio=tuple(args.ratio), hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
        num_workers=args.workers, distributed=True, **_device_loader_kwargs(device))
    loader.sampler.seed = args.seed  # timm's factory leaves DistributedSampler at seed 0
    return loader


def create_eval_loader(dataset, data_config: dict, batch_size: int, workers: int, device: torch.device,
                       distributed: bool):
    """timm evaluation loader with the eval transforms (resize, centre crop) of ``data_config``.

    Distributed, each process reads every world_size-th image, padded with repeats (see :func:`eval_sample_mask`).
    """
    return create_loader(
        dataset, input_size=data_config["input_size"], batch_size=batch_size, is_training=False,
        interpolation=data_config["interpolation"], mean=data_config["mean"], std=data_config["std"],
        crop_pct=data_config["crop_pct"], crop_mode=data_config["crop_mode"], num_workers=workers,
        distributed=distributed, **_device_loader_kwargs(device))


def eval_sample_mask(first_local_index: int, batch_size: int, rank: int, world_size: int,
                     num_samples: int) -> torch.Tensor:
    """(batch_size,) bool: which images of an eval batch are real, not padding of timm's OrderedDistributedSampler.

    That sampler gives process ``rank`` the images at global positions rank, rank + world_size, ...; positions past
    ``num_samples`` repeat earlier images.
    """
    positions = rank + world_size * torch.arange(first_local_index, first_local_index + batch_size)
    return positions < num_samples


def seed_of_worker_ignoring_stop_signals(worker_info) -> int:
    """timm worker seeding hook: the seed torch gave the data loader worker, after making it ignore SIGTERM/SIGINT.

    torchrun and terminals signal whole process groups; the training process handles the signal (checkpoint after
    the current step), and its loader workers must live until then. They still exit with their parent.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return worker_info.seed


def _device_loader_kwargs(device: torch.device) -> dict:
    # On CUDA, timm's prefetcher normalises (and random-erases) on the GPU; each epoch starts fresh workers so
    # that their seeds follow the per-epoch seeding of the trainer (exact resume).
    on_cuda = device.type == "cuda"
    return dict(device=device, use_prefetcher=on_cuda, pin_memory=on_cuda, persistent_workers=False,
                worker_seeding=seed_of_worker_ignoring_stop_signals)
