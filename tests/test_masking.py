"""Masking strategies on their defining properties (FSFM paper, arXiv 2412.12032; upstream
``collate_fn_crfrp``): exact masked count, the covered region fully masked, the proportional rule, one
region per collated batch."""

from __future__ import annotations

import numpy as np
import pytest

from training.masking import (
    COVERABLE,
    GROUPS,
    MASKING_STRATEGIES,
    crfr_p_image,
    crfr_r_image,
    mask_batch,
    num_masked,
    patch_groups,
)
from training.regions import LaPa, landmark_region_map

PATCH = 16
SIZE = 224
L = (SIZE // PATCH) ** 2
K = num_masked(L, 0.75)


def face_map(shift: float = 0.0, spread: float = 1.0) -> np.ndarray:
    """A landmark-drawn LaPa map of a frontal face in a 224 crop (eyes 64 px apart by default)."""
    centre = np.array([112.0 + shift, 112.0])
    offsets = np.array([[-32, -20], [32, -20], [0, 12], [-24, 44], [24, 44]], float) * spread
    return landmark_region_map(centre + offsets, SIZE)


def faces(n: int) -> np.ndarray:
    """n different faces: shifted and scaled copies."""
    rng = np.random.default_rng(7)
    return np.stack([face_map(rng.uniform(-15, 15), rng.uniform(0.8, 1.2)) for _ in range(n)])


def proportional_deviation(groups: np.ndarray, region: int | None, mask: np.ndarray) -> tuple[int, int]:
    """Replays CRFR-P's walk on a finished mask: returns (sum over the walked groups of
    |masked - round(rho * available)|, |sum of the rounded targets - (K - |M_fr|)|). CRFR-P's fix-up
    touches only patches outside M_fr, one per missing/extra patch, so the two are equal exactly."""
    fr = groups[region] if region is not None else np.zeros(groups.shape[1], bool)
    claimed = fr.copy()
    rho = (K - fr.sum()) / (L - fr.sum())
    deviation, planned = 0, 0
    for g in range(len(GROUPS)):
        if g == region:
            continue
        available = groups[g] & ~claimed
        target = round(rho * available.sum())
        deviation += abs(int((mask & available).sum()) - target)
        planned += target
        claimed |= groups[g]
    return deviation, abs(planned - int(K - fr.sum()))


def test_mask_count_matches_the_encoders_kept_patches() -> None:
    assert (K, num_masked(196, 0.75), num_masked(64, 0.75), num_masked(196, 0.5)) == (147, 147, 48, 98)


def test_patch_groups_touch_any_pixel_and_overlap() -> None:
    labels = np.full((32, 32), LaPa.SKIN, np.uint8)  # 2 x 2 patches of 16
    labels[0, 0] = LaPa.HAIR  # patch 0: skin + one hair pixel -> skin, hair and boundary
    labels[20, 5] = LaPa.RIGHT_EYE  # patch 2
    labels[16:, 16:] = LaPa.NOSE  # patch 3: only nose
    labels[31, 31] = LaPa.BACKGROUND
    groups = dict(zip(GROUPS, patch_groups(labels, 16), strict=False))
    assert groups["hair"].tolist() == [True, False, False, False]
    assert groups["skin"].tolist() == [True, True, True, False]
    assert groups["boundary"].tolist() == [True, False, False, False]  # patch 3 has background but no skin
    assert groups["eyes"].tolist() == [False, False, True, False]
    assert groups["nose"].tolist() == [False, False, False, True]
    assert groups["background"].tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patch_groups(np.zeros((30, 32), np.uint8), 16)


def test_the_face_map_has_every_group() -> None:
    groups = patch_groups(face_map(), PATCH)
    sizes = dict(zip(GROUPS, groups.sum(axis=1).tolist(), strict=False))
    assert all(sizes[name] > 0 for name in GROUPS), sizes
    assert sizes["nose"] < sizes["skin"] < L and sizes["boundary"] > 0


@pytest.mark.parametrize("strategy", sorted(MASKING_STRATEGIES))
def test_every_strategy_masks_exactly_k_and_fr_inside_the_mask(strategy: str) -> None:
    maps = faces(8)
    rng = np.random.default_rng(0)
    for _ in range(25):
        mask, fr = mask_batch(maps, strategy, PATCH, 0.75, rng)
        assert mask.shape == fr.shape == (8, L) and mask.dtype == fr.dtype == bool
        assert (mask.sum(axis=1) == K).all()
        assert not (fr & ~mask).any()
        if strategy in ("random", "frp"):
            assert not fr.any()


def test_crfr_p_covers_one_region_per_batch_fully() -> None:
    maps = faces(8)
    groups = patch_groups(maps, PATCH)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        mask, fr = MASKING_STRATEGIES["crfr_p"](groups, K, rng)
        # M_fr is one coverable group, the same for every face of the batch, and fully masked.
        regions = {r for r in range(COVERABLE) if all(np.array_equal(fr[i], groups[i, r]) for i in range(8))}
        assert len(regions) >= 1, "M_fr is not the same group in every face"
        assert (mask[fr]).all()
        seen |= regions
    assert seen == set(range(COVERABLE))  # every coverable group gets drawn, skin/background never


def test_crfr_p_follows_the_proportional_rule_and_random_masking_does_not() -> None:
    groups = patch_groups(face_map(), PATCH)
    rng = np.random.default_rng(2)
    for region in range(COVERABLE):
        for _ in range(30):
            mask, fr = crfr_p_image(groups, region, K, rng)
            assert np.array_equal(fr, groups[region]) and mask[fr].all()
            deviation, fixup = proportional_deviation(groups, region, mask)
            assert deviation == fixup, (GROUPS[region], deviation, fixup)
    # The same checks on plain random masking: the region is rarely fully covered and the
    # per-group counts stray from the rule.
    nose = GROUPS.index("nose")
    random_masks = [MASKING_STRATEGIES["random"](groups[None], K, rng)[0][0] for _ in range(200)]
    covered = np.mean([m[groups[nose]].all() for m in random_masks])
    obeys = np.mean([np.subtract(*proportional_deviation(groups, nose, m)) == 0 for m in random_masks])
    assert covered < 0.5 and obeys < 0.2, (covered, obeys)


def test_crfr_p_measured_fractions_follow_rho() -> None:
    """CRFR-P's proportional step: within each walked group the masked fraction is about rho."""
    groups = patch_groups(face_map(), PATCH)
    region = GROUPS.index("nose")
    rho = (K - groups[region].sum()) / (L - groups[region].sum())
    rng = np.random.default_rng(3)
    masks = np.stack([crfr_p_image(groups, region, K, rng)[0] for _ in range(300)])
    claimed = groups[region].copy()
    for g in range(len(GROUPS)):
        if g == region:
            continue
        available = groups[g] & ~claimed
        claimed |= groups[g]
        if available.sum() >= 4:
            assert masks[:, available].mean() == pytest.approx(rho, abs=0.08), GROUPS[g]


def test_crfr_p_extreme_case_keeps_exactly_k_of_the_region() -> None:
    labels = np.full((SIZE, SIZE), LaPa.HAIR, np.uint8)  # hair touches every patch: |M_fr| = L > K
    labels[100:120, 100:120] = LaPa.NOSE
    groups = patch_groups(labels, PATCH)
    mask, fr = crfr_p_image(groups, GROUPS.index("hair"), K, np.random.default_rng(4))
    assert mask.sum() == K and np.array_equal(mask, fr) and not (fr & ~groups[GROUPS.index("hair")]).any()


def test_frp_is_proportional_without_a_region() -> None:
    groups = patch_groups(face_map(), PATCH)
    rng = np.random.default_rng(5)
    for _ in range(30):
        mask, fr = MASKING_STRATEGIES["frp"](groups[None], K, rng)
        assert not fr.any()
        deviation, fixup = proportional_deviation(groups, None, mask[0])
        assert deviation == fixup


def test_crfr_r_covers_the_region_then_masks_uniformly() -> None:
    groups = patch_groups(face_map(), PATCH)
    region = GROUPS.index("mouth")
    rng = np.random.default_rng(6)
    masks = []
    for _ in range(400):
        mask, fr = crfr_r_image(groups, region, K, rng)
        assert np.array_equal(fr, groups[region]) and mask[fr].all() and mask.sum() == K
        masks.append(mask)
    rest = ~groups[region]
    rate = (K - groups[region].sum()) / rest.sum()
    frequencies = np.stack(masks)[:, rest].mean(axis=0)  # every other patch equally likely
    assert np.abs(frequencies - rate).max() < 0.1
    assert any(np.subtract(*proportional_deviation(groups, region, m)) for m in masks)


def test_random_masking_is_uniform() -> None:
    maps = face_map()[None].repeat(4, axis=0)
    rng = np.random.default_rng(8)
    masks = np.concatenate([mask_batch(maps, "random", PATCH, 0.75, rng)[0] for _ in range(300)])
    assert np.abs(masks.mean(axis=0) - K / L).max() < 0.08


def test_strategies_are_selected_by_name() -> None:
    assert set(MASKING_STRATEGIES) == {"crfr_p", "crfr_r", "frp", "random"}
    with pytest.raises(ValueError, match="unknown masking strategy"):
        mask_batch(faces(1), "fasking", PATCH, 0.75, np.random.default_rng(0))
    a = mask_batch(faces(4), "crfr_p", PATCH, 0.75, np.random.default_rng(9))
    b = mask_batch(faces(4), "crfr_p", PATCH, 0.75, np.random.default_rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))  # a pure function of maps and seed
