"""Per-iteration schedules shared by pretraining and fine-tuning, as mae's ``util/lr_sched.py``.

* Learning rate: linear warm-up from 0 over ``warmup_epochs``, then a half-cosine from the peak to
  ``min_lr`` at ``epochs`` (or the peak held, ``constant``). Evaluated at fractional epochs
  (``epoch + step / iters_per_epoch``); past ``epochs`` it stays at ``min_lr``.
* EMA momentum of the pretraining target: a cosine from ``base`` to 1 over the run, no warm-up
  (BYOL's schedule, as the FSFM paper, arXiv 2412.12032; docs/pretraining.md).

Pure Python: no torch, so configs can build their schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    """The learning rate of one run: warm-up, then half-cosine (or constant)."""

    peak_lr: float
    epochs: float
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    constant: bool = False

    def lr_at(self, epoch: float) -> float:
        """Learning rate at a fractional epoch."""
        if epoch < self.warmup_epochs:
            return self.peak_lr * epoch / self.warmup_epochs
        if self.constant:
            return self.peak_lr
        progress = (epoch - self.warmup_epochs) / max(self.epochs - self.warmup_epochs, 1e-12)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def momentum_at(iteration: int, total: int, base: float) -> float:
    """EMA momentum: cosine from ``base`` at iteration 0 to 1 at ``total``, no warm-up."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * iteration / total)) / 2.0
