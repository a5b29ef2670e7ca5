"""Self-blended images on the astronaut's face (hand-measured landmarks): masks, pairs, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fsfm.face.crop import CropSpec, crop_face, crop_region
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS
from training.sbi import MEAN_FACE_5, face_outline, face_region_mask, fit_affine, hull_mask, self_blend

CROP = 128


@pytest.fixture(scope="module")
def face(astronaut_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut's 1.3x face crop (128 px) and her 5 landmarks in crop pixels."""
    spec = CropSpec(size=CROP, scale=1.3, border="pad")
    x1, y1, x2, y2 = crop_region(ASTRONAUT_FACE_BOX, 512, 512, spec)
    landmarks = (ASTRONAUT_LANDMARKS - [x1, y1]) * CROP / (x2 - x1)
    return crop_face(astronaut_rgb, ASTRONAUT_FACE_BOX, spec), landmarks


def _inside(point: np.ndarray, mask: np.ndarray) -> bool:
    x, y = np.round(point).astype(int)
    return bool(mask[y, x] > 0)


def test_fit_affine_recovers_a_known_map() -> None:
    affine = np.array([[1.7, -0.3, 12.0], [0.4, 1.5, -5.0]])
    dst = MEAN_FACE_5 @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(fit_affine(MEAN_FACE_5, dst), affine, atol=1e-9)


def test_outline_from_five_landmarks_encloses_the_face(face: tuple[np.ndarray, np.ndarray]) -> None:
    _, landmarks = face
    eye_distance = np.linalg.norm(landmarks[1] - landmarks[0])
    for forehead in (True, False):
        outline = face_outline(landmarks, forehead=forehead)
        width = outline[:, 0].max() - outline[:, 0].min()
        assert 2.0 * eye_distance < width < 2.7 * eye_distance  # cheek to cheek ~2.3 eye distances
        assert outline[:, 1].max() > landmarks[3:, 1].max() + 0.5 * eye_distance  # chin well below the mouth
        top = outline[:, 1].min()
        assert top < landmarks[:2, 1].min() - (0.7 if forehead else 0.25) * eye_distance
    mask = hull_mask(landmarks, (CROP, CROP), np.random.default_rng(0))
    assert all(_inside(p, mask) for p in landmarks)
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[0, -1] == 0
    many = np.stack([hull_mask(landmarks, (CROP, CROP), np.random.default_rng(s)) for s in range(40)])
    assert len({m.sum() for m in many}) >= 3  # several hull variants


def test_68_point_landmarks_are_hulled_directly() -> None:
    ring = np.stack(
        [
            64 + 30 * np.cos(np.linspace(0, 2 * np.pi, 68, endpoint=False)),
            64 + 40 * np.sin(np.linspace(0, 2 * np.pi, 68, endpoint=False)),
        ],
        1,
    )
    np.testing.assert_array_equal(face_outline(ring), ring)
    mask = hull_mask(ring, (128, 128), np.random.default_rng(0))
    assert mask.sum() == pytest.approx(np.pi * 30 * 40, rel=0.05)


def test_pair_differs_only_inside_the_blend_mask(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    transformed_target = 0
    for seed in range(12):
        blend = self_blend(image, np.random.default_rng(seed), landmarks=landmarks)
        assert blend.fake.shape == blend.real.shape == image.shape and blend.fake.dtype == np.uint8
        assert blend.mask.shape == image.shape[:2] and 0.0 <= blend.mask.min() and blend.mask.max() <= 1.0
        outside = blend.mask == 0
        assert outside.mean() > 0.3
        np.testing.assert_array_equal(blend.fake[outside], blend.real[outside])
        inside = blend.mask > 0.2
        assert np.abs(blend.fake[inside].astype(int) - blend.real[inside].astype(int)).mean() > 2.0
        assert _inside(landmarks[2], blend.mask)  # the nose is always blended
        transformed_target += int(not np.array_equal(blend.real, image))
    assert 0 < transformed_target < 12  # the colour/frequency change goes to the target about half the time


def test_self_blend_is_deterministic_per_seed(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, landmarks = face
    a = self_blend(image, np.random.default_rng(7), landmarks=landmarks)
    b = self_blend(image, np.random.default_rng(7), landmarks=landmarks)
    c = self_blend(image, np.random.default_rng(8), landmarks=landmarks)
    np.testing.assert_array_equal(a.fake, b.fake)
    assert not np.array_equal(a.fake, c.fake)


def test_blend_from_a_region_map_and_bad_inputs(face: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = face
    regions = np.zeros((CROP, CROP), np.uint8)
    regions[30:100, 35:95] = 1  # skin
    regions[50:56, 45:55] = 4  # an eye
    regions[:20] = 10  # hair
    mask = face_region_mask(regions)
    assert mask.sum() == 70 * 60
    blend = self_blend(image, np.random.default_rng(0), face_mask=mask)
    assert (blend.mask[:15] == 0).all()  # nothing blended in the hair band
    with pytest.raises(ValueError, match="landmarks or a face mask"):
        self_blend(image, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        self_blend(
            image, np.random.default_rng(0), landmarks=np.full((5, 2), -500.0) + np.arange(5)[:, None] * [1, 0.5]
        )
