"""RetinaFace: weights loading, ONNX conversion parity, decoding and the detector's contract.

The published weights cannot be downloaded here, so the tests write seeded random weights in the
published key layouts. With random weights the class scores mean nothing; the class heads are
set to a constant face probability instead, so thresholds have a predictable effect.
"""

from __future__ import annotations

import math
import subprocess
import sys
import zipfile
from collections.abc import Callable
from itertools import product
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from fsfm.face.boxes import nms  # noqa: E402
from fsfm.face.detector import DetectorConfig, create_detector  # noqa: E402
from fsfm.face.retinaface import MIN_SIZES, STEPS, RetinaFaceDetector, decode, prior_boxes  # noqa: E402
from fsfm.face.retinaface_convert import (  # noqa: E402
    ConversionError,
    RetinaFace,
    RetinaFaceForExport,
    build_retinaface,
    convert_retinaface,
    load_retinaface_state_dict,
    verify_onnx,
)

FACE_PROBABILITY = 0.8
IMAGE_SIZE = (96, 136)  # (height, width), differs from the conversion's 160x160 check


@pytest.fixture(scope="module")
def model() -> RetinaFace:
    """Seeded random weights (BN statistics included), every prior at ``FACE_PROBABILITY``."""
    torch.manual_seed(0)
    model = RetinaFace()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        for head in model.ClassHead:
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.copy_(torch.tensor([0.0, math.log(FACE_PROBABILITY / (1 - FACE_PROBABILITY))] * 2))
    return model.eval()


@pytest.fixture(scope="module")
def converted(model: RetinaFace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files by normalisation: ternaus from a plain state dict, biubug6 from a ``module.`` one."""
    folder = tmp_path_factory.mktemp("retinaface")
    state = model.state_dict()
    torch.save(state, folder / "plain.pth")
    torch.save(_prefixed(state, "module."), folder / "Resnet50_Final.pth")
    return {
        "ternaus": convert_retinaface(folder / "plain.pth", folder / "ternaus.onnx", normalization="ternaus"),
        "biubug6": convert_retinaface(folder / "Resnet50_Final.pth", folder / "biubug6.onnx", normalization="biubug6"),
    }


def _save_legacy(state: dict, path: Path) -> None:
    torch.save(state, path, _use_new_zipfile_serialization=False)


def _zip_around(save: Callable[[dict, Path], None]) -> Callable[[dict, Path], None]:
    """A writer of the ternaus release format: an ordinary zip holding one weights file."""

    def write(state: dict, path: Path) -> None:
        inner = path.with_suffix(".pth")
        save(state, inner)
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(inner, "retinaface_resnet50_2020-07-20.pth")
        inner.unlink()

    return write


def _prefixed(state: dict, prefix: str) -> dict:
    return {f"{prefix}{key}": value for key, value in state.items()}


WRITERS: dict[str, Callable[[dict, Path], None]] = {
    "plain": torch.save,
    "module_prefix": lambda state, path: torch.save(_prefixed(state, "module."), path),
    "lightning_checkpoint": lambda state, path: torch.save({"state_dict": _prefixed(state, "model.")}, path),
    "ternaus_zip": _zip_around(torch.save),
    "ternaus_zip_legacy_pickle": _zip_around(_save_legacy),
}


@pytest.mark.parametrize("layout", WRITERS)
def test_load_state_dict_layouts(layout: str, model: RetinaFace, tmp_path: Path) -> None:
    expected = model.state_dict()
    path = tmp_path / "weights.zip"
    WRITERS[layout](expected, path)
    loaded = load_retinaface_state_dict(path)
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_reference_key_names() -> None:
    keys = set(RetinaFace().state_dict())
    for key in (
        "body.conv1.weight",
        "body.bn1.running_var",
        "body.layer1.0.downsample.0.weight",
        "body.layer4.2.conv3.weight",
        "fpn.output3.0.weight",
        "fpn.merge2.1.bias",
        "ssh3.conv7x7_3.1.weight",
        "ssh1.conv5X5_1.0.weight",
        "ClassHead.2.conv1x1.bias",
        "BboxHead.0.conv1x1.weight",
        "LandmarkHead.1.conv1x1.weight",
    ):
        assert key in keys
    assert not any(key.startswith(("body.fc", "body.avgpool")) for key in keys)
    assert RetinaFace().ClassHead[0].conv1x1.out_channels == 4


def test_wrong_weights_are_refused(model: RetinaFace, tmp_path: Path) -> None:
    state = dict(model.state_dict())
    del state["LandmarkHead.2.conv1x1.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ConversionError, match="LandmarkHead.2.conv1x1.bias"):
        build_retinaface(tmp_path / "partial.pth")


def test_normalisations(model: RetinaFace) -> None:
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    bgr_minus_mean = rgb.flip(1) - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    imagenet = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        for name, normalised in (("biubug6", bgr_minus_mean), ("ternaus", imagenet)):
            loc, conf, landms = RetinaFaceForExport(model, name)(rgb)
            want_loc, logits, want_landms = model(normalised)
            torch.testing.assert_close(loc, want_loc, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(landms, want_landms, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(conf, logits.softmax(-1))


@pytest.mark.parametrize("normalization", ["ternaus", "biubug6"])
def test_onnx_matches_torch(normalization: str, model: RetinaFace, converted: dict[str, Path]) -> None:
    image = torch.rand(2, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        expected = [t.numpy() for t in RetinaFaceForExport(model, normalization)(image)]
    session = ort.InferenceSession(str(converted[normalization]), providers=["CPUExecutionProvider"])
    actual = session.run(["loc", "conf", "landms"], {"image": image.numpy()})
    for want, got in zip(expected, actual, strict=False):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert actual[0].shape[1] == len(prior_boxes(*IMAGE_SIZE))
    np.testing.assert_allclose(actual[1][..., 1], FACE_PROBABILITY, atol=1e-5)


def test_verify_onnx_raises_on_disagreement(model: RetinaFace, converted: dict[str, Path]) -> None:
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 255
    with pytest.raises(ConversionError, match="disagrees"):
        verify_onnx(RetinaFaceForExport(model, "biubug6"), converted["ternaus"], image)


def _reference_priors(height: int, width: int) -> torch.Tensor:
    """Priors as Pytorch_Retinaface computes them: [cx, cy, w, h] as fractions of the input."""
    anchors = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=False):
        for i, j in product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in sizes:
                anchors.append([(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height])
    return torch.tensor(anchors, dtype=torch.float64)


def _reference_decode(
    loc: torch.Tensor, landms: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    priors = _reference_priors(height, width)
    centres = priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * 0.2)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1) * torch.tensor([width, height] * 2)
    points = [priors[:, :2] + landms[:, 2 * k : 2 * k + 2] * 0.1 * priors[:, 2:] for k in range(5)]
    return boxes, torch.cat(points, dim=1) * torch.tensor([width, height] * 5)


def test_decode_matches_reference() -> None:
    height, width = IMAGE_SIZE
    priors = prior_boxes(height, width)
    generator = torch.Generator().manual_seed(3)
    loc = torch.randn(len(priors), 4, generator=generator, dtype=torch.float64)
    landms = torch.randn(len(priors), 10, generator=generator, dtype=torch.float64)
    want_boxes, want_landmarks = _reference_decode(loc, landms, height, width)
    boxes, landmarks = decode(loc.numpy().astype(np.float32), landms.numpy().astype(np.float32), priors)
    np.testing.assert_allclose(priors, _reference_priors(height, width) * torch.tensor([width, height] * 2), atol=1e-4)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(landmarks.reshape(-1, 10), want_landmarks.numpy(), rtol=1e-5, atol=1e-3)
    assert not priors.flags.writeable and prior_boxes(height, width) is priors


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Shrunk to 128x160 by ``max_side=160``: multiples of the coarsest stride, so all prior
    centres, and with the small random offsets all box centres, lie inside the image."""
    return np.random.default_rng(4).integers(0, 256, (256, 320, 3), dtype=np.uint8)


def test_detect_returns_well_formed_faces(converted: dict[str, Path], image: np.ndarray) -> None:
    detector = RetinaFaceDetector(converted["biubug6"], min_face_size=8, score_threshold=0.5, threads=2, max_side=160)
    faces = detector.detect(image)
    assert faces
    height, width = image.shape[:2]
    for face in faces:
        assert face.box.shape == (4,) and face.box.dtype == np.float32
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        assert face.score == pytest.approx(FACE_PROBABILITY, abs=1e-4)
        assert min(face.width, face.height) >= 8
        centre = (face.box[:2] + face.box[2:]) / 2
        assert 0 <= centre[0] <= width and 0 <= centre[1] <= height
    assert [face.score for face in faces] == sorted((face.score for face in faces), reverse=True)
    # After NMS, a second NMS pass at the same threshold has nothing left to suppress.
    boxes, scores = np.stack([face.box for face in faces]), np.array([face.score for face in faces])
    assert len(nms(boxes, scores, 0.4)) == len(faces)
    # Faces on the right of the 128x160 network input reach past x = 160 only when mapped back.
    assert max(float((face.box[0] + face.box[2]) / 2) for face in faces) > 0.8 * width


@pytest.mark.parametrize(("score_threshold", "min_face_size"), [(0.9, 8), (0.5, 10_000)])
def test_detect_filters(
    converted: dict[str, Path], image: np.ndarray, score_threshold: float, min_face_size: int
) -> None:
    detector = RetinaFaceDetector(converted["biubug6"], min_face_size, score_threshold, threads=2, max_side=160)
    assert detector.detect(image) == []


def test_detect_rejects_non_rgb_uint8(converted: dict[str, Path], image: np.ndarray) -> None:
    detector = RetinaFaceDetector(converted["ternaus"], threads=1)
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(image.astype(np.float32))


def test_factory_builds_retinaface(converted: dict[str, Path]) -> None:
    detector = create_detector(DetectorConfig(kind="retinaface", weights=converted["ternaus"], threads=1))
    assert isinstance(detector, RetinaFaceDetector)


def test_detector_imports_without_torch() -> None:
    code = """
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
import fsfm.face.retinaface
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
