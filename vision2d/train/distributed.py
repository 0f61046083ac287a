"""Process group set-up for torchrun (NCCL on CUDA, gloo on CPU), reductions, and per-process RNG control."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: rank among world_size processes, and its device."""
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str | None) -> DistributedContext:
    """Join the torchrun job described by the environment, or form a one-process group without torchrun.

    A group always exists, so the same code path (DistributedSampler, all_reduce) serves one and many processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world_size > 1:
        dist.init_process_group(backend)  # env:// from torchrun
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistributedContext(rank=rank, world_size=world_size, device=device)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all processes of a list of numbers (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_process(flags: bool | list[bool], device: torch.device) -> bool | list[bool]:
    """True on every process if ``flags`` is true on at least one (element-wise for a list, in one reduction)."""
    tensor = torch.tensor([int(flag) for flag in flags] if isinstance(flags, list) else [int(flags)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()] if isinstance(flags, list) else bool(tensor.item())


def seed_everything(*seed_parts: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from a well-mixed hash of ``seed_parts``."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """This process's python/numpy/torch/CUDA RNG states, as types ``torch.load(weights_only=True)`` accepts."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return dict(
        python=random.getstate(),
        numpy=(bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    )


def set_rng_state(state: dict) -> None:
    """Restore RNG states captured by :func:`get_rng_state`."""
    random.setstate(state["python"])
    bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(obj) -> list:
    """``obj`` of every process, in rank order."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
