"""The demo model's other-identity faces (``training.demo_heldout``): what they are, that the swaps
change the inner face only, and that the committed manifest's thresholds and metrics are what the
module computes from them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fsfm.face.detector import create_detector
from fsfm.package.manifest import Manifest
from tests.servers import REPO_ROOT
from training.demo_heldout import (
    FAKE_KINDS,
    HeldoutScores,
    SourceFace,
    face_swap,
    other_identity_faces,
    recalibrated,
    score_heldout,
    write_heldout,
)

DEMO = REPO_ROOT / "demo" / "models" / "demo-deepfake" / "1"


@pytest.fixture(scope="module")
def faces(mtcnn_dir, sample_photos) -> list[SourceFace]:
    return other_identity_faces(create_detector())


@pytest.fixture(scope="module")
def heldout(faces, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("heldout")
    return folder, write_heldout(folder, faces, Manifest.load(DEMO).crop)


def test_the_heldout_set_is_eight_other_people_and_their_fakes(faces, heldout) -> None:
    assert [face.name for face in faces] == [f"group-{k}" for k in range(6)] + ["portrait-0", "camera-0"]
    folder, counts = heldout
    assert counts == {"real": 8, "fake-sbi": 32, "fake-swap": 56}  # 4 self-blends each, every ordered pair
    for label, count in counts.items():
        crops = sorted((folder / label).glob("*.png"))
        assert len(crops) == count and cv2.imread(str(crops[0])).shape == (64, 64, 3)


def test_a_swap_replaces_the_inner_face_and_leaves_the_rest(faces) -> None:
    target, source = faces[0], faces[1]
    swapped, original = face_swap(target, source).astype(np.int16), target.image.astype(np.int16)
    x1, y1, x2, y2 = np.round(target.box).astype(int)
    w, h = x2 - x1, y2 - y1
    eyes_to_mouth = np.s_[y1 + h // 3 : y2 - h // 5, x1 + w // 4 : x2 - w // 4]
    assert np.abs(swapped[eyes_to_mouth] - original[eyes_to_mouth]).mean() > 10
    outside = np.ones(swapped.shape[:2], bool)
    outside[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w] = False
    assert np.array_equal(swapped[outside], original[outside])


def test_the_committed_demo_manifest_is_calibrated_on_them(heldout) -> None:
    folder, _ = heldout
    scores = score_heldout(DEMO, folder)
    assert isinstance(scores, HeldoutScores) and set(scores.fakes) == set(FAKE_KINDS)
    committed = Manifest.load(DEMO)
    computed = recalibrated(committed, scores, committed.provenance.notes or "")
    # 8 real faces resolve only the EER point; the fixed-FPR targets are recorded as unresolved
    assert [p.name for p in computed.thresholds.operating_points] == ["eer"]
    assert [(u.target_fpr, u.genuine) for u in committed.thresholds.unresolved] == [(0.01, 8), (0.001, 8)]
    assert committed.thresholds.default == pytest.approx(computed.thresholds.default, abs=1e-3)
    assert committed.provenance.metrics == pytest.approx(computed.provenance.metrics, abs=1e-3)
    assert set(committed.provenance.metrics) >= {"heldout_auc", "heldout_sbi_auc", "heldout_swap_auc"}
    assert not any(key.startswith("val_") for key in committed.provenance.metrics)  # no same-photo figures
    assert abs(committed.provenance.metrics["heldout_auc"] - 0.5) < 0.1  # the demo is at chance: documented
