"""Data-parallel student training across processes or machines (torch DistributedDataParallel).

Launched by ``torchrun`` (which sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``...), each rank
streams its own shards (``storage.stream`` reads rank and world size from torch.distributed),
gradients are averaged by DDP, and only rank 0 writes checkpoints and models. Ranks may see
different numbers of batches; ``DistributedDataParallel.join`` keeps them in step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist


def init_from_env() -> tuple[int, int]:
    """Join the process group described by torchrun's environment; ``(rank, world_size)``.

    Without ``WORLD_SIZE`` > 1 this is a no-op returning ``(0, 1)``. The backend is nccl where
    CUDA is available, gloo otherwise (CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def wrap(model: torch.nn.Module) -> tuple[torch.nn.Module, Callable[[], AbstractContextManager]]:
    """The module to call in training and a context that tolerates uneven batch counts."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model, contextlib.nullcontext
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    return ddp, ddp.join


def finish() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
