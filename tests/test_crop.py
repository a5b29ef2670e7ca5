"""The crop convention: FSFM's 1.3x square, its border rule, box transforms, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from fsfm.face.crop import BoxTransform, CropSpec, Normalization, crop_face, crop_region, normalize


def test_square_is_scale_times_the_longer_side_centred_on_the_box() -> None:
    box = np.array([100, 100, 140, 180], np.float32)  # 40 x 80, centre (120, 140)
    assert crop_region(box, 1000, 1000, CropSpec(scale=1.3)) == (68, 88, 172, 192)  # side int(104)


def test_border_shift_clips_like_fsfm_and_pad_keeps_the_face_centred() -> None:
    box = np.array([0, 10, 40, 50], np.float32)  # centre (20, 30), side 52
    assert crop_region(box, 200, 200, CropSpec(border="shift")) == (0, 4, 52, 56)
    assert crop_region(box, 30, 200, CropSpec(border="shift")) == (0, 4, 30, 56)  # cut at the far edge
    assert crop_region(box, 200, 200, CropSpec(border="pad")) == (-6, 4, 46, 56)
    image = np.full((60, 60, 3), 255, np.uint8)
    padded = crop_face(image, box, CropSpec(border="pad", size=52, interpolation="bilinear"))
    assert padded.shape == (52, 52, 3)
    assert padded[:, :5].max() == 0 and padded[:, 7:].min() == 255  # 6 columns outside the image


def test_box_transform_moves_and_scales_around_the_centre() -> None:
    box = np.array([10, 20, 30, 60], np.float32)  # w 20, h 40, centre (20, 40)
    assert np.array_equal(BoxTransform().apply(box), box)
    moved = BoxTransform(dx=0.5, dy=-0.25, sw=2.0, sh=0.5).apply(box)
    np.testing.assert_allclose(moved, [10, 20, 50, 40])  # centre (30, 30), 40 x 20


def test_crop_face_output_and_empty_crops() -> None:
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    crop = crop_face(image, np.array([30, 20, 70, 80], np.float32), CropSpec(size=64))
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    with pytest.raises(ValueError, match="empty crop"):
        crop_face(image, np.array([500, 500, 520, 520], np.float32), CropSpec())


def test_normalize_is_chw_standardised() -> None:
    crops = np.zeros((2, 4, 4, 3), np.uint8)
    crops[..., 0] = 255
    out = normalize(crops, Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0)))
    assert out.shape == (2, 3, 4, 4) and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out[:, 0], 1.0)
    np.testing.assert_allclose(out[:, 1], -2.0)
    np.testing.assert_allclose(out[:, 2], -0.5)


def test_mean_std_file_reads_the_first_line(tmp_path) -> None:
    path = tmp_path / "pretrain_ds_mean_std.txt"
    path.write_text(
        Normalization(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)).to_mean_std_line()
        + "\n"
        + '{"mean": [0,0,0], "std": [1,1,1]}\n'
    )
    assert Normalization.from_mean_std_file(path) == Normalization(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
