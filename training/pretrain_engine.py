"""The FSFM pretraining step and epoch, as mae's ``engine_pretrain.py``; ``training.pretrain`` builds
the pieces and runs the epochs.

One iteration (a micro-step when accumulating): the lr is set from the schedule on the first micro-step
of each accumulation window; the EMA target encodes the full view under ``no_grad``; the online network
returns every loss term; the scaled loss is back-propagated (DDP's ``no_sync`` until the window's last
micro-step, where the optimiser steps, with global-norm clipping unless off); the target then moves
towards the online weights at every iteration, micro-steps included (momentum on a cosine to 1). A
non-finite loss raises ``FloatingPointError``. Loss terms are averaged over processes.
"""

from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from training.pretrain_config import PretrainConfig
from training.schedules import CosineSchedule, momentum_at

LOSS_TERMS = ("loss", "rec_m", "rec_fr", "cl")


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_o for every parameter the target shares with the online
    network, fixed position embeddings included."""
    online_params = dict(online.named_parameters())
    names = [name for name, _ in target.named_parameters()]
    target_params = [param for _, param in target.named_parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, [online_params[n].detach() for n in names], alpha=1.0 - momentum)


@dataclass
class PretrainEngine:
    """What a pretraining step touches: the online network (and its DDP wrapper), the EMA target, the
    optimiser, the GradScaler and the schedules."""

    config: PretrainConfig
    model: nn.Module
    target: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: CosineSchedule
    device: torch.device
    amp: torch.dtype | None
    iters_per_epoch: int
    world_size: int = 1
    ddp: DistributedDataParallel | None = None

    @property
    def total_iters(self) -> int:
        return self.config.epochs * self.iters_per_epoch

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
        """One iteration: returns lr, momentum and the loss terms (averaged over processes)."""
        config = self.config
        if step % config.accum_iter == 0:
            lr = self.schedule.lr_at(epoch + step / self.iters_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        images = batch["images"].to(self.device, non_blocking=True)  # (B, 3, H, W)
        mask = batch["mask"].to(self.device, non_blocking=True)  # (B, L)
        fr_mask = batch["fr_mask"].to(self.device, non_blocking=True)  # (B, L)
        update = (step + 1) % config.accum_iter == 0
        autocast = torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not update else contextlib.nullcontext()
        with no_sync:
            with autocast:
                with torch.no_grad():
                    target = self.target(images)  # (B, E): the full view
                losses = (self.ddp or self.model)(images, mask, fr_mask, target)
            if not math.isfinite(losses["loss"].item()):
                raise FloatingPointError(f"loss is {losses['loss'].item()} at epoch {epoch} step {step}; stopping")
            self.scaler.scale(losses["loss"] / config.accum_iter).backward()
        if update:
            if config.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        momentum = momentum_at(epoch * self.iters_per_epoch + step, self.total_iters, config.ema_momentum)
        ema_update(self.target, self.model, momentum)

        values = torch.stack([losses[k].detach().float() for k in LOSS_TERMS])
        if self.world_size > 1:
            dist.all_reduce(values)
            values /= self.world_size
        lr_now = self.optimizer.param_groups[0]["lr"]
        return {"lr": lr_now, "momentum": momentum, **dict(zip(LOSS_TERMS, values.tolist(), strict=True))}

    def train_one_epoch(self, loader: DataLoader, epoch: int, log: csv.DictWriter | None, bar: Any) -> dict[str, float]:
        """Every iteration of ``epoch`` (the loader's sampler already set to it): one ``log`` row per
        iteration, the progress ``bar`` advanced; returns the epoch's mean of each loss term."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        for step, batch in enumerate(loader):
            record = self.train_step(batch, epoch, step)
            for key in LOSS_TERMS:
                sums[key] += record[key]
            if log is not None:
                log.writerow({"epoch": epoch, "iteration": epoch * self.iters_per_epoch + step, **record})
            bar.set_postfix({k: f"{record[k]:.4f}" for k in LOSS_TERMS}, refresh=False)
            bar.update()
        return {k: v / self.iters_per_epoch for k, v in sums.items()}
