"""What a training run decides about the official recipe when it starts, and says out loud when it departs.

* Effective batch: the official runs fixed theirs (pretraining 256 x 4 accumulation x 4 GPUs = 4096; DfD
  2 GPUs x 32 = 64; DiFF 1 x 256; FAS 96). A run on other hardware reaches the same effective batch by
  gradient accumulation (``accumulation_steps``), so the linearly scaled lr and the number of optimiser
  steps are the official ones too; where the per-process batch does not divide it, the nearest reachable
  one is used, with a ``RecipeWarning``.
* Warm-up: a recipe's warm-up longer than the run (``fsfm finetune --epochs 1`` with the recipe's 5 warm-up
  epochs) never lets the lr reach its peak, and the model learns nothing. ``capped_warmup`` keeps the
  recipe's share of the run instead and warns.

Pure Python (no torch), so configurations can call it.
"""

from __future__ import annotations

import warnings


class RecipeWarning(UserWarning):
    """A run departs from its recipe in a way that changes what it learns."""


def accumulation_steps(accum_iter: int | None, effective_batch: int | None, batch_size: int, world_size: int) -> int:
    """Gradient accumulation steps of a run: ``accum_iter`` when given, else those that make ``batch_size x
    world_size x steps`` the ``effective_batch`` (1 when none is asked for). Warns when the run's effective
    batch is not ``effective_batch``: the lr follows it, and so does what the run learns."""
    per_step = batch_size * world_size
    if accum_iter is None:
        accum_iter = 1 if effective_batch is None else max(1, round(effective_batch / per_step))
    if effective_batch is not None and accum_iter * per_step != effective_batch:
        warnings.warn(
            f"effective batch {accum_iter * per_step} (batch {batch_size} x {world_size} process(es) x "
            f"{accum_iter} accumulation) differs from the recipe's {effective_batch}",
            RecipeWarning,
            stacklevel=2,
        )
    return accum_iter


def capped_warmup(warmup_epochs: float, epochs: float, recipe_share: float, from_recipe: bool) -> float:
    """The warm-up to run: as given, unless it does not end before the run does. Then a warm-up the
    recipe chose is cut to ``recipe_share`` of the run (warned); one given explicitly is kept (warned),
    since that was asked for."""
    if warmup_epochs < epochs or warmup_epochs == 0:
        return warmup_epochs
    if not from_recipe:
        warnings.warn(
            f"warm-up of {warmup_epochs:g} epochs >= the run's {epochs:g}: the lr never reaches its peak",
            RecipeWarning,
            stacklevel=2,
        )
        return warmup_epochs
    capped = epochs * recipe_share
    warnings.warn(
        f"the recipe's warm-up of {warmup_epochs:g} epochs >= the run's {epochs:g}; warming up for {capped:g} "
        "instead (set --warmup-epochs to choose)",
        RecipeWarning,
        stacklevel=2,
    )
    return capped
