"""Process-group and device setup shared by every training run (pretraining, fine-tuning), as mae's
``util/misc.py`` ``init_distributed_mode``.

Contract: under ``torchrun`` (``WORLD_SIZE`` > 1, env:// rendezvous) ``setup_device`` joins the process
group (NCCL on GPUs, gloo on CPU) and pins each process to its ``LOCAL_RANK`` GPU; launched as one plain
process it touches no process group. ``Distributed.close`` leaves the group only if this process joined it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank 0 of 1 when not launched by ``torchrun``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group, if ``init_distributed`` joined it."""
        if self.initialised_here:
            dist.destroy_process_group()


def init_distributed(use_cuda: bool) -> Distributed:
    """Joins the process group when launched by ``torchrun`` (WORLD_SIZE > 1, env:// rendezvous)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), ours)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; any other name is taken as given (``cpu``, ``cuda``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_device(name: str) -> tuple[torch.device, Distributed]:
    """The device for this process and its place in the run: joins the process group under ``torchrun``
    and, on GPUs with several processes, uses (and selects) the ``LOCAL_RANK`` GPU."""
    device = resolve_device(name)
    distributed = init_distributed(device.type == "cuda")
    if device.type == "cuda" and distributed.world_size > 1:
        device = torch.device("cuda", distributed.local_rank)
        torch.cuda.set_device(device)
    return device, distributed


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` (``auto``, ``bf16``, ``fp16`` or ``off``), or None for fp32. CPUs
    always run fp32 (bf16 autocast is slower than fp32 on CPUs without AMX); ``auto`` is bf16 where the GPU
    supports it, else fp16 (which needs a GradScaler)."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
