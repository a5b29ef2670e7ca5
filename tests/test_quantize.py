"""``fsfm quantize`` and ``FSFM_PRECISION=int8``: the int8 variant is made, judged on held-out
faces against fp32 (recorded in the manifest), and served only when asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter
from pydantic import ValidationError

from fsfm.analysis import prepare_faces
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import create_detector
from fsfm.models.checkpoints import file_sha256
from fsfm.package import ModelPackage
from fsfm.package.manifest import Manifest
from fsfm.scoring import attack_scores
from service.settings import Settings
from tests.packages import make_tiny_package
from tests.references import encode
from tests.servers import REPO_ROOT, running_server
from training.finetune_data import folder_source
from training.quantize import add_int8_to_package


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, sample_photos: Path, mtcnn_dir: Path) -> Path:
    """real/: the sample photos' faces cropped; fake/: the same crops blurred and colour-shifted."""
    from fsfm.imaging import decode_image

    root = tmp_path_factory.mktemp("heldout")
    detector = create_detector()
    for photo in ("group.jpg", "portrait.png"):
        image = decode_image((sample_photos / photo).read_bytes())
        for k, face in enumerate(detector.detect(image)):
            x1, y1, x2, y2 = (int(v) for v in face.box)
            crop = Image.fromarray(image[max(0, y1) : y2, max(0, x1) : x2]).resize((64, 64))
            altered = crop.filter(ImageFilter.GaussianBlur(2)).point(lambda v: min(255, v + 40))
            for label, picture in (("real", crop), ("fake", altered)):
                (root / label).mkdir(exist_ok=True)
                picture.save(root / label / f"{photo}-{k}.png")
    return root


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, heldout: Path) -> ModelPackage:
    package = make_tiny_package(tmp_path_factory.mktemp("models"), name="tiny-deepfake")
    return add_int8_to_package(package, [folder_source(heldout, "heldout")], batch_size=8)


def test_variant_is_recorded_with_its_held_out_accuracy(quantized: ModelPackage) -> None:
    info = quantized.manifest.variant("int8")
    assert info is not None and info.format == "onnx"
    assert info.sha256 == file_sha256(quantized.variant_path(info))
    assert Manifest.load(quantized.path).variant("int8") == info  # on disk, not only in memory
    (check,) = info.heldout
    assert check.set == "heldout" and check.faces == 14  # 7 faces, real and altered
    assert check.auc_fp32 is not None and check.auc_variant is not None
    assert 0 < check.mean_abs_score_diff <= check.max_abs_score_diff < 0.1
    assert 0.8 <= check.label_agreement <= 1.0
    assert "dynamic quantization" in info.method


def test_a_variant_needs_held_out_faces(tmp_path: Path) -> None:
    package = make_tiny_package(tmp_path, name="tiny-deepfake")
    with pytest.raises(ValueError, match="held-out"):
        add_int8_to_package(package, [])


def test_int8_is_an_onnxruntime_setting() -> None:
    with pytest.raises(ValidationError, match="precision int8"):
        Settings(precision="int8", engine="torch")


def test_service_runs_the_int8_graph_when_asked(quantized: ModelPackage, astronaut_rgb: np.ndarray) -> None:
    faces = prepare_faces(astronaut_rgb, create_detector().detect(astronaut_rgb), quantized.manifest)
    tensor = np.stack([f.tensor for f in faces])
    int8 = OnnxRuntimeEngine(quantized.variant_path(quantized.manifest.variant("int8"))).run(tensor)["logits"]
    fp32 = OnnxRuntimeEngine(quantized.onnx_path).run(tensor)["logits"]
    assert not np.allclose(int8, fp32, atol=1e-7, rtol=0)  # the two graphs are told apart below
    expected = attack_scores(int8, quantized.manifest)
    with running_server(quantized.path.parent.parent, {"precision": "int8"}) as server:
        assert httpx.get(server.rest_url + "/readyz").json()["precision"] == "int8"
        answer = httpx.post(
            server.rest_url + "/v1/deepfake", files={"file": ("a.jpg", encode(astronaut_rgb, "PNG"))}
        ).json()
    assert answer["faces"][0]["score"] == pytest.approx(float(expected[0]), abs=2e-6)


def test_service_refuses_to_start_int8_without_the_variant(tmp_path: Path) -> None:
    make_tiny_package(tmp_path / "models", name="tiny-deepfake")
    env = {"FSFM_PRECISION": "int8", "FSFM_PORT": "0", "FSFM_GRPC_PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "fsfm_cli", "serve", "--models", str(tmp_path / "models")],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "tiny-deepfake:1 has no int8 variant" in result.stderr + result.stdout
