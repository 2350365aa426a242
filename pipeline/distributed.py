"""Data-parallel student training across processes or machines (torch DistributedDataParallel).

Launched by ``torchrun`` (which sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``...),
each rank streams its own shards (``storage.stream`` reads rank and world size from
torch.distributed), gradients are averaged by DDP, and only rank 0 writes checkpoints and
models. Ranks may see different numbers of batches; ``DistributedDataParallel.join`` keeps them
in step. On GPUs each rank takes its own device ``cuda:LOCAL_RANK`` and the group is nccl; on
CPU it is gloo.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist

Loss = Callable[[Any, int], torch.Tensor]
"""``(batch, epoch) -> scalar loss``."""


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment: ``(rank, world, device)``.

    Without ``WORLD_SIZE`` > 1 this is a no-op returning ``(0, 1, device)``. A cuda ``device``
    without an index becomes this rank's ``cuda:LOCAL_RANK`` and the backend nccl; any other
    device keeps gloo (DDP over CPU parameters cannot use nccl).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class _LossModule(torch.nn.Module):
    """A model and its loss as one module: DDP's forward then covers every parameter the loss
    touches, the CRF included (which the loss calls outside the model's own forward)."""

    def __init__(self, model: torch.nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Any, epoch: int) -> torch.Tensor:
        return self._loss(batch, epoch)


def wrap(
    model: torch.nn.Module, loss: Loss, *, find_unused_parameters: bool = False
) -> tuple[Loss, Callable[[], AbstractContextManager[Any]]]:
    """The loss to train with (``loss`` itself in one process) and a context that tolerates
    uneven batch counts.

    ``find_unused_parameters``: the loss may leave some of ``model``'s parameters without a
    gradient (emission KD at λ = 1 never touches the CRF), which DDP must then look for.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss, contextlib.nullcontext
    ddp = torch.nn.parallel.DistributedDataParallel(
        _LossModule(model, loss), find_unused_parameters=find_unused_parameters
    )
    return ddp, ddp.join


def finish() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
