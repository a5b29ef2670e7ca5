"""The fine-tuning step, epoch and prediction, as mae's ``engine_finetune.py``; ``training.finetune`` builds
the pieces and runs the epochs, validation and checkpoints.

One training iteration: the lr (times each group's ``lr_scale``) is set from the schedule on the first
micro-step of each accumulation window; mixup/cutmix and label smoothing make soft targets; the
soft-target cross-entropy (optionally class-weighted) is back-propagated (DDP's ``no_sync`` until the
window's last micro-step or the epoch's last step, where the optimiser steps, with optional global-norm
clipping). A non-finite loss raises ``FloatingPointError``. Prediction is sharded across ranks and gathered
back into the source's order on every rank.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from training.schedules import CosineSchedule


class Mixup:
    """timm's Mixup/CutMix in batch mode: with probability ``prob``, one lambda ~ Beta(alpha, alpha)
    for the batch, mixing each sample with the batch reversed; CutMix (chosen with ``switch_prob``
    when both are on) pastes a box of area 1 - lambda and corrects lambda to the box actually pasted.
    Targets are label-smoothed one-hots (``smoothing / classes`` off, ``1 - smoothing + that`` on),
    mixed with the same lambda."""

    def __init__(
        self, mixup: float, cutmix: float, prob: float, switch_prob: float, smoothing: float, num_classes: int
    ) -> None:
        self.mixup, self.cutmix, self.prob, self.switch_prob = mixup, cutmix, prob, switch_prob
        self.smoothing, self.num_classes = smoothing, num_classes

    def targets(self, classes: torch.Tensor) -> torch.Tensor:
        off = self.smoothing / self.num_classes
        return F.one_hot(classes, self.num_classes).float() * (1.0 - self.smoothing) + off

    def __call__(
        self, images: torch.Tensor, classes: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix = 1.0, False
        if (self.mixup > 0 or self.cutmix > 0) and rng.random() < self.prob:
            use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < self.switch_prob)
            alpha = self.cutmix if use_cutmix else self.mixup
            lam = float(rng.beta(alpha, alpha))
        soft = self.targets(classes)
        if lam == 1.0:
            return images, soft
        images = images.clone()
        if use_cutmix:
            h, w = images.shape[-2:]
            ratio = math.sqrt(1.0 - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            images[:, :, y1:y2, x1:x2] = images.flip(0)[:, :, y1:y2, x1:x2]
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
        else:
            images = images * lam + images.flip(0) * (1.0 - lam)
        return images, soft * lam + soft.flip(0) * (1.0 - lam)


def soft_target_ce(
    logits: torch.Tensor, targets: torch.Tensor, class_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy against soft targets; with ``class_weight`` (per class index), each sample weighs
    its target's expected class weight and the loss is the weighted mean."""
    per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    if class_weight is None:
        return per_sample.mean()
    weights = targets @ class_weight
    return (per_sample * weights).sum() / weights.sum()


@dataclass
class FinetuneEngine:
    """What a fine-tuning step touches: the classifier (and its DDP wrapper), the optimiser with layer-wise
    ``lr_scale`` groups, the GradScaler, the schedule and the loss's pieces."""

    model: nn.Module
    train_model: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: CosineSchedule
    mixup: Mixup
    label_to_class: torch.Tensor  # (2,): dataset label (0 genuine, 1 attack) -> class index
    attack_index: int
    device: torch.device
    amp: torch.dtype | None
    accum_iter: int = 1
    clip_grad: float | None = None
    class_weight: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def train_one_epoch(self, loader: DataLoader, epoch: int, rng: np.random.Generator, bar: Any) -> dict[str, float]:
        """Every iteration of ``epoch`` over ``loader`` ((B, 3, H, W) images, (B,) labels; its sampler already
        set to the epoch), advancing the progress ``bar``; returns the epoch's mean training loss and the
        last lr."""
        self.train_model.train()
        accum, iters = self.accum_iter, len(loader)
        total, count, lr = 0.0, 0, 0.0
        for step, (images, labels) in enumerate(loader):
            if step % accum == 0:
                lr = self.schedule.lr_at(epoch + step / iters)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
            images = images.to(self.device, non_blocking=True)
            images, targets = self.mixup(images, self.label_to_class[labels.to(self.device)], rng)
            update = (step + 1) % accum == 0 or step + 1 == iters
            sync = contextlib.nullcontext() if update or self.world_size == 1 else self.train_model.no_sync()
            with sync:
                with self._autocast():
                    logits = self.train_model(images)
                loss = soft_target_ce(logits.float(), targets, self.class_weight)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}")
                self.scaler.scale(loss / accum).backward()
            if update:
                if self.clip_grad is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            total, count = total + loss.item(), count + 1
            bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.update()
        return {"train_loss": total / max(count, 1), "lr": lr}

    @torch.no_grad()
    def predict(self, faces: Dataset, batch_size: int, num_workers: int) -> tuple[np.ndarray, float]:
        """(attack scores (N,), mean cross-entropy) over ``faces`` (items ``(image, label, index)``),
        sharded across ranks and gathered in ``faces``' order."""
        self.model.eval()
        mine = list(range(self.rank, len(faces), self.world_size))
        loader = DataLoader(Subset(faces, mine), batch_size=batch_size, num_workers=num_workers)
        indices, scores, losses = [], [], []
        for images, labels, index in loader:
            with self._autocast():
                logits = self.model(images.to(self.device)).float()
            classes = self.label_to_class[labels.to(self.device)]
            losses.append(F.cross_entropy(logits, classes, reduction="none").cpu())
            scores.append(torch.softmax(logits, dim=-1)[:, self.attack_index].cpu())
            indices.append(index)
        part = (
            (torch.cat(indices).tolist(), torch.cat(scores).tolist(), torch.cat(losses).tolist())
            if indices
            else ([], [], [])
        )
        parts = [part]
        if self.world_size > 1:
            parts = [None] * self.world_size  # type: ignore[list-item]
            dist.all_gather_object(parts, part)
        order = np.argsort(np.array([i for p in parts for i in p[0]]))
        all_scores = np.array([s for p in parts for s in p[1]])[order]
        all_losses = np.array([x for p in parts for x in p[2]])[order]
        return all_scores, float(all_losses.mean())
