"""Masking strategies for masked image modelling on faces, as plain functions of region maps.

CRFR-P ("Covering a Random Facial Region followed by Proportional masking") is FSFM's strategy,
implemented as the FSFM paper (arXiv 2412.12032) and upstream ``fsfm-3c/util/datasets.py``
``collate_fn_crfrp`` (github.com/wolo-wolo/FSFM-CVPR25) do it; the paper's comparison strategies are
built from the same parts: random (MAE), FRP (proportional masking without covering a region) and
CRFR-R (cover a region, then uniform random masking).

Conventions: a face has L patches in row-major order; a mask is bool (L,) with True = masked
(hidden from the encoder). Every strategy masks exactly ``num_masked(L, ratio)`` patches, the
complement of the ``int(L * (1 - ratio))`` patches the encoder keeps. ``fr`` is the covered facial
region M_fr (a subset of the mask; empty for strategies that cover none).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.regions import LaPa

# The 8 patch groups of upstream ``collate_fn_crfrp.facial_region_group``, in the fixed order CRFR-P walks
# them. "boundary" has no labels of its own: patches holding face skin next to hair or background.
GROUPS: tuple[str, ...] = ("eyebrows", "eyes", "nose", "mouth", "boundary", "hair", "skin", "background")
GROUP_LABELS: dict[str, tuple[int, ...]] = {
    "eyebrows": (LaPa.RIGHT_BROW, LaPa.LEFT_BROW),
    "eyes": (LaPa.RIGHT_EYE, LaPa.LEFT_EYE),
    "nose": (LaPa.NOSE,),
    "mouth": (LaPa.UPPER_LIP, LaPa.INNER_MOUTH, LaPa.LOWER_LIP),
    "hair": (LaPa.HAIR,),
    "skin": (LaPa.SKIN,),
    "background": (LaPa.BACKGROUND,),
}
# Regions that may be covered: the first six groups, never skin or background.
COVERABLE = 6

MaskPair = tuple[np.ndarray, np.ndarray]


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """K, the number of masked patches: all but the ``int(L * (1 - r))`` the encoder keeps (147 of 196
    at r = 0.75)."""
    return num_patches - int(num_patches * (1 - mask_ratio))


def patch_groups(region_maps: np.ndarray, patch_size: int) -> np.ndarray:
    """LaPa region maps (..., H, W) -> bool (..., 8, L): which patches touch which group.

    A patch belongs to a group if any of its pixels carries one of the group's labels (a max-pool with
    kernel = stride = patch size), so groups overlap.
    """
    *lead, h, w = region_maps.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"region map {h}x{w} is not a multiple of the patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    bits = np.left_shift(np.uint16(1), region_maps.astype(np.uint16))  # one bit per LaPa label (< 16)
    tiles = bits.reshape(*lead, gh, patch_size, gw, patch_size)
    present = np.bitwise_or.reduce(np.bitwise_or.reduce(tiles, axis=-1), axis=-2).reshape(*lead, gh * gw)

    def touching(labels: tuple[int, ...]) -> np.ndarray:  # (..., L): any pixel with one of the labels
        return (present & sum(1 << int(label) for label in labels)) != 0

    groups = {name: touching(labels) for name, labels in GROUP_LABELS.items()}
    groups["boundary"] = touching((LaPa.SKIN,)) & touching((LaPa.HAIR, LaPa.BACKGROUND))
    return np.stack([groups[name] for name in GROUPS], axis=-2)


def _choose(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct indices where ``candidates`` (bool) is True, uniformly at random."""
    return rng.choice(np.flatnonzero(candidates), size=count, replace=False)


def _cover_region(region: np.ndarray, k: int, rng: np.random.Generator) -> MaskPair:
    """Step 1 of CRFR: mask the whole chosen region M_fr. In the extreme case |M_fr| >= K, random
    patches of M_fr are unmasked until exactly K remain, and M_fr becomes that mask (step 3)."""
    mask = region.copy()
    excess = int(mask.sum()) - k
    if excess > 0:
        mask[_choose(rng, mask, excess)] = False
    return mask, mask.copy()


def _fix_total(mask: np.ndarray, protected: np.ndarray, k: int, rng: np.random.Generator) -> None:
    """Brings the mask to exactly K patches: masks random unmasked patches if short, unmasks random
    masked patches outside ``protected`` (M_fr) if over."""
    total = int(mask.sum())
    if total < k:
        mask[_choose(rng, ~mask, k - total)] = True
    elif total > k:
        mask[_choose(rng, mask & ~protected, total - k)] = False


def _proportional(
    groups: np.ndarray, order: list[int], mask: np.ndarray, fr: np.ndarray, k: int, rng: np.random.Generator
) -> None:
    """Step 2 of CRFR-P (and all of FRP), in place: with rho = (K - |M_fr|) / (L - |M_fr|), walk the
    groups in ``order``; of each group's patches not yet claimed (by M_fr or an earlier group) mask
    round(rho * count) chosen uniformly; then fix the total to exactly K."""
    claimed = fr.copy()
    rho = (k - int(fr.sum())) / (mask.size - int(fr.sum()))
    for g in order:
        available = groups[g] & ~claimed
        mask[_choose(rng, available, round(rho * int(available.sum())))] = True
        claimed |= groups[g]
    _fix_total(mask, fr, k, rng)


def crfr_p_image(groups: np.ndarray, region: int, k: int, rng: np.random.Generator) -> MaskPair:
    """CRFR-P for one face: groups bool (8, L), ``region`` the covered group's index (< 6), K masked.
    Returns (mask, fr), both bool (L,), exactly K masked and fr a subset of the mask."""
    mask, fr = _cover_region(groups[region], k, rng)
    if int(fr.sum()) < k:
        _proportional(groups, [g for g in range(len(GROUPS)) if g != region], mask, fr, k, rng)
    return mask, fr


def crfr_r_image(groups: np.ndarray, region: int, k: int, rng: np.random.Generator) -> MaskPair:
    """CRFR-R for one face: cover the region as CRFR-P does, then mask uniformly random other patches."""
    mask, fr = _cover_region(groups[region], k, rng)
    _fix_total(mask, fr, k, rng)
    return mask, fr


def frp_image(groups: np.ndarray, k: int, rng: np.random.Generator) -> MaskPair:
    """FRP for one face: proportional masking over all 8 groups (rho = K / L), no region covered."""
    mask = np.zeros(groups.shape[1], dtype=bool)
    empty = mask.copy()
    _proportional(groups, list(range(len(GROUPS))), mask, empty, k, rng)
    return mask, empty


def random_image(groups: np.ndarray, k: int, rng: np.random.Generator) -> MaskPair:
    """MAE's random masking for one face: K patches uniformly at random; region maps unused."""
    mask = np.zeros(groups.shape[1], dtype=bool)
    mask[rng.choice(mask.size, size=k, replace=False)] = True
    return mask, np.zeros_like(mask)


BatchMasking = Callable[[np.ndarray, int, np.random.Generator], MaskPair]


def _batched(image_fn: Callable[..., MaskPair], covers_region: bool) -> BatchMasking:
    """Applies a per-face strategy to a batch (B, 8, L). A covered region is drawn once per collated
    batch (per GPU) and used for every face in it, as the official collate does (``collate_fn_crfrp``)."""

    def batch_fn(groups: np.ndarray, k: int, rng: np.random.Generator) -> MaskPair:
        region = (int(rng.integers(COVERABLE)),) if covers_region else ()
        masks, frs = zip(*(image_fn(g, *region, k, rng) for g in groups), strict=False)
        return np.stack(masks), np.stack(frs)

    return batch_fn


# Strategies by name: groups bool (B, 8, L), K, rng -> (mask, fr), each bool (B, L).
MASKING_STRATEGIES: dict[str, BatchMasking] = {
    "crfr_p": _batched(crfr_p_image, covers_region=True),
    "crfr_r": _batched(crfr_r_image, covers_region=True),
    "frp": _batched(frp_image, covers_region=False),
    "random": _batched(random_image, covers_region=False),
}


def mask_batch(
    region_maps: np.ndarray, strategy: str, patch_size: int, mask_ratio: float, rng: np.random.Generator
) -> MaskPair:
    """Region maps uint8 (B, H, W) -> (mask, fr), bool (B, L), by the named strategy."""
    if strategy not in MASKING_STRATEGIES:
        raise ValueError(f"unknown masking strategy {strategy!r}; choose from {sorted(MASKING_STRATEGIES)}")
    groups = patch_groups(region_maps, patch_size)
    return MASKING_STRATEGIES[strategy](groups, num_masked(groups.shape[-1], mask_ratio), rng)
