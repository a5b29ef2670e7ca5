"""MTCNN: conversion parity, detection on known faces, no PyTorch at detection time, box helpers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from fsfm.assets import MTCNN_FILES, MTCNN_LICENCE_FILE, fetch_mtcnn_state_dicts
from fsfm.face.boxes import nms, square_boxes
from fsfm.face.mtcnn import MtcnnDetector
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces, iou
from tests.no_torch import run_without_torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(mtcnn_dir: Path) -> MtcnnDetector:
    return MtcnnDetector(mtcnn_dir)


def _assert_face_at(face, box: np.ndarray, landmarks: np.ndarray) -> None:
    assert_face_at(face.box, face.landmarks, box, landmarks)


def test_finds_the_astronaut(detector: MtcnnDetector, astronaut_rgb: np.ndarray) -> None:
    faces = detector.detect(astronaut_rgb)
    assert len(faces) == 1
    face = faces[0]
    assert face.score >= 0.9
    assert face.box.shape == (4,) and face.box.dtype == np.float32
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    _assert_face_at(face, ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS)


@pytest.mark.parametrize(
    "image",
    [data.coffee(), np.full((300, 400, 3), 128, np.uint8), np.zeros((8, 8, 3), np.uint8)],
    ids=["coffee", "grey", "tiny"],
)
def test_no_face_gives_empty_list(detector: MtcnnDetector, image: np.ndarray) -> None:
    assert detector.detect(image) == []


def test_finds_each_tiled_face(detector: MtcnnDetector, astronaut_rgb: np.ndarray) -> None:
    # The head and shoulders, pasted at three sizes onto a grey canvas.
    x0, y0, x1, y1 = 150, 30, 300, 210
    patch = astronaut_rgb[y0:y1, x0:x1]
    canvas = np.full((420, 760, 3), 200, np.uint8)
    expected = []
    for (left, top), scale in [((20, 30), 1.0), ((220, 120), 0.5), ((360, 20), 1.6)]:
        resized = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
        shift = np.array([left - x0 * scale, top - y0 * scale])
        expected.append((ASTRONAUT_FACE_BOX * scale + np.tile(shift, 2), ASTRONAUT_LANDMARKS * scale + shift))

    faces = detector.detect(canvas)

    assert len(faces) == 3
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    for box, landmarks in expected:
        best = max(faces, key=lambda face: iou(face.box, box))
        _assert_face_at(best, box, landmarks)


def test_pyramid_spans_min_face_size_to_the_image(detector: MtcnnDetector) -> None:
    assert detector.min_face_size == 20
    scales = detector.scales(720, 1280)
    # A 20-pixel face covers P-Net's 12-pixel cell at the nearest power of 0.709.
    assert scales[0] == pytest.approx(0.709) and abs(np.log(scales[0] / (12 / 20))) <= np.log(1 / 0.709) / 2
    np.testing.assert_allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 720 * scales[-1] >= 12 > 720 * scales[-1] * 0.709


def test_pyramids_of_every_min_face_size_share_one_grid(mtcnn_dir: Path, detector: MtcnnDetector) -> None:
    coarse = MtcnnDetector(mtcnn_dir, min_face_size=40).scales(720, 1280)
    assert detector.scales(720, 1280)[-len(coarse) :] == coarse
    assert np.log(coarse[0]) / np.log(0.709) == pytest.approx(round(np.log(coarse[0]) / np.log(0.709)))


def test_boxes_barely_follow_min_face_size(mtcnn_dir: Path, group_photo_path: Path, astronaut_rgb) -> None:
    """Measured worst IoU between min_face_size 20 and 40 on these seven faces: 0.91 (0.83 when the
    pyramid started at 12 / min_face_size)."""
    from fsfm.imaging import read_image_file

    overlaps = []
    for image in (read_image_file(group_photo_path), astronaut_rgb):
        small, large = (MtcnnDetector(mtcnn_dir, size).detect(image) for size in (20, 40))
        overlaps += [max(iou(a.box, b.box) for b in large) for a in small]
    assert len(overlaps) == 7 and min(overlaps) >= 0.88, overlaps


def test_min_face_size_skips_much_smaller_faces(mtcnn_dir: Path, astronaut_rgb: np.ndarray) -> None:
    # The astronaut's face is ~90 px wide. MTCNN tolerates faces somewhat under the minimum, and its
    # pyramid starts up to 1 / 0.709 below it (300 -> 265 px), but not at a third of it.
    assert MtcnnDetector(mtcnn_dir, min_face_size=300).detect(astronaut_rgb) == []


def test_rejects_non_rgb_uint8(detector: MtcnnDetector) -> None:
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64, 3), np.float32))


def test_missing_weights_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fsfm setup"):
        MtcnnDetector(tmp_path)


def test_shipped_onnx_matches_torch(mtcnn_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from fsfm.face.mtcnn_convert import NET_NAMES, check_parity, load_net

    pt_dir = fetch_mtcnn_state_dicts(tmp_path)
    source = json.loads((mtcnn_dir / "SOURCE.json").read_text())
    assert source["license"] == "MIT" and "MIT License" in (mtcnn_dir / MTCNN_LICENCE_FILE).read_text()
    for name in NET_NAMES:
        pt_path = pt_dir / f"{name}.pt"
        assert hashlib.sha256(pt_path.read_bytes()).hexdigest() == source["sha256"][f"{name}.pt"]
        assert check_parity(name, load_net(name, pt_path), mtcnn_dir / f"{name}.onnx", seed=1) < 1e-4
    for name in MTCNN_FILES:
        assert hashlib.sha256((mtcnn_dir / name).read_bytes()).hexdigest() == source["onnx_sha256"][name]


def test_export_rewrites_match_the_original_layers() -> None:
    """The exported forms of PReLU and the face softmax equal the layers facenet-pytorch uses."""
    torch = pytest.importorskip("torch")
    from fsfm.face.mtcnn_convert import face_probability, prelu

    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.PReLU(8)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, generator=generator))  # slopes of both signs, some above 1
        for shape in [(2, 8, 5, 7), (3, 8)]:
            x = torch.randn(shape, generator=generator)
            torch.testing.assert_close(prelu(layer, x), layer(x))
        conv, linear = torch.nn.Conv2d(8, 2, 1), torch.nn.Linear(8, 2)
        x = torch.randn(2, 8, 5, 7, generator=generator)
        torch.testing.assert_close(face_probability(conv, x), torch.softmax(conv(x), dim=1)[:, 1:2])
        x = torch.randn(3, 8, generator=generator)
        torch.testing.assert_close(face_probability(linear, x), torch.softmax(linear(x), dim=1)[:, 1:2])


def _run_without_torch(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    return run_without_torch(tmp_path, ["-c", "import sys\n" + textwrap.dedent(body)], cwd=REPO_ROOT)


def test_detection_does_not_import_torch(mtcnn_dir: Path, astronaut_path: Path, tmp_path: Path) -> None:
    result = _run_without_torch(
        tmp_path,
        f"""
        import numpy as np
        from PIL import Image
        from fsfm.face.mtcnn import MtcnnDetector

        image = np.asarray(Image.open({str(astronaut_path)!r}).convert("RGB"))
        print(len(MtcnnDetector({str(mtcnn_dir)!r}).detect(image)))
        assert "torch" not in sys.modules
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_conversion_without_torch_asks_for_the_training_extra(tmp_path: Path) -> None:
    result = _run_without_torch(
        tmp_path,
        f"""
        from pathlib import Path
        from fsfm.assets import ensure_mtcnn

        try:
            ensure_mtcnn(Path({str(tmp_path / "mtcnn")!r}))
        except RuntimeError as exc:
            print(exc)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "fsfm[train]" in result.stdout


def test_nms_keeps_the_best_of_each_cluster() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=np.float64)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(nms(boxes[:0], scores[:0], 0.5), np.zeros(0, np.int64))


def test_nms_min_mode_drops_nested_boxes() -> None:
    boxes = np.array([[0, 0, 20, 20], [5, 5, 10, 10]], dtype=np.float64)  # IoU 1/16, inside
    scores = np.array([0.9, 0.8])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7), [0, 1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, mode="min"), [0])


@pytest.mark.parametrize("block", [7, 64, 500])
def test_nms_matches_the_greedy_definition(block: int) -> None:
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 200, (150, 2))
    boxes = np.hstack([corners, corners + rng.uniform(5, 40, (150, 2))])
    scores = rng.uniform(size=150)
    kept: list[int] = []
    for i in np.argsort(-scores):
        if all(iou(boxes[i], boxes[k]) <= 0.3 for k in kept):
            kept.append(int(i))
    np.testing.assert_array_equal(nms(boxes, scores, 0.3, block=block), kept)


def test_square_boxes_keep_the_centre() -> None:
    squares = square_boxes(np.array([[10.0, 20.0, 30.0, 60.0]]))
    np.testing.assert_allclose(squares, [[0.0, 20.0, 40.0, 60.0]])


def test_finds_every_face_of_a_group_photo(detector: MtcnnDetector, group_photo_path: Path) -> None:
    from fsfm.imaging import read_image_file

    faces = detector.detect(read_image_file(group_photo_path))
    assert_group_faces([face.box for face in faces])
    assert all(face.score >= 0.9 for face in faces)
