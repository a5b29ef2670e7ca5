"""``fsfm quantize`` and ``FSFM_PRECISION=int8``: the variants (ONNX Runtime int8, OpenVINO int8,
the bf16 record) are made, judged on held-out faces against fp32 (recorded in the manifest with the
engine and CPU they were measured on), and served as ``select_variant`` rules."""

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
from fsfm.engines.select import BF16_MATH, Host, cpu_model, select_variant
from fsfm.face.detector import create_detector
from fsfm.models.checkpoints import file_sha256
from fsfm.package import ModelPackage
from fsfm.package.manifest import OPENVINO_INT8_FILE, Manifest
from fsfm.package.repository import load_package
from fsfm.scoring import attack_scores
from service.settings import Settings
from tests.packages import make_tiny_package
from tests.references import encode
from tests.servers import REPO_ROOT, metric, running_server, scrape
from training.quantize import add_variants


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


def quantize_cli(package: Path, heldout: Path, *args: str) -> subprocess.CompletedProcess:
    """``fsfm quantize`` as users run it, in a process of its own (OpenVINO and NNCF stay out of the
    test process: see tests/test_engines.py)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fsfm_cli",
            "quantize",
            "--model",
            str(package),
            "--heldout",
            f"folder:{heldout},name=heldout",
        ]
        + ["--workers", "0", "--batch-size", "8", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, heldout: Path) -> ModelPackage:
    """The tiny package with every variant this host can make."""
    package = make_tiny_package(tmp_path_factory.mktemp("models"), name="tiny-deepfake")
    result = quantize_cli(package.path, heldout)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_package(package.path)


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
    assert check.measured_on.startswith("onnxruntime on ") and cpu_model() in check.measured_on


def test_openvino_int8_is_an_ir_calibrated_on_faces_and_judged(quantized: ModelPackage) -> None:
    info = quantized.manifest.variant("int8", "openvino-ir")
    assert info is not None and info.file == OPENVINO_INT8_FILE
    path = quantized.variant_path(info)
    assert path.is_file() and path.with_suffix(".bin").is_file() and info.sha256 == file_sha256(path)
    assert "NNCF" in info.method and "calibrated on 14 faces of heldout" in info.method
    (check,) = info.heldout
    assert check.faces == 14 and check.measured_on.startswith("openvino on ")
    assert check.max_abs_score_diff < 0.1 and check.label_agreement >= 0.8
    assert not list(quantized.path.glob(".*partial*"))  # written atomically, nothing left behind


def test_bf16_is_measured_only_where_the_cpu_has_bf16(quantized: ModelPackage, heldout: Path, tmp_path: Path) -> None:
    """On a CPU with AMX or AVX512-BF16 the bf16 record is made; elsewhere OpenVINO would run f32
    and record no drift at all, so it is not made and the command says why."""
    info = quantized.manifest.variant("bf16")
    if BF16_MATH & Host.detect().cpu_features:
        assert info is not None and info.file == quantized.manifest.onnx.file and "bf16" in info.method
        (check,) = info.heldout
        assert 0 < check.max_abs_score_diff < 0.05 and check.label_agreement == 1.0
    else:
        assert info is None
        package = make_tiny_package(tmp_path, name="tiny-deepfake")
        result = quantize_cli(package.path, heldout, "--variants", "openvino-bf16")
        assert result.returncode == 2 and "this CPU has no bf16 instructions" in result.stderr


def test_quantize_names_what_it_cannot_make(tmp_path: Path, heldout: Path) -> None:
    package = make_tiny_package(tmp_path, name="tiny-deepfake")
    result = quantize_cli(package.path, heldout, "--variants", "tensorrt-int4")
    assert (
        result.returncode == 2 and "unknown variants ['tensorrt-int4']; choose from onnxruntime-int8" in result.stderr
    )


def test_a_variant_needs_held_out_faces(tmp_path: Path) -> None:
    package = make_tiny_package(tmp_path, name="tiny-deepfake")
    with pytest.raises(ValueError, match="held-out"):
        add_variants(package, [])


def test_int8_is_an_onnxruntime_setting() -> None:
    with pytest.raises(ValidationError, match="precision int8"):
        Settings(precision="int8", engine="torch")


def test_service_runs_the_onnxruntime_int8_graph_when_asked(quantized: ModelPackage, astronaut_rgb: np.ndarray) -> None:
    faces = prepare_faces(astronaut_rgb, create_detector().detect(astronaut_rgb), quantized.manifest)
    tensor = np.stack([f.tensor for f in faces])
    int8 = OnnxRuntimeEngine(quantized.variant_path(quantized.manifest.variant("int8"))).run(tensor)["logits"]
    fp32 = OnnxRuntimeEngine(quantized.onnx_path).run(tensor)["logits"]
    assert not np.allclose(int8, fp32, atol=1e-7, rtol=0)  # the two graphs are told apart below
    expected = attack_scores(int8, quantized.manifest)
    with running_server(quantized.path.parent.parent, {"engine": "onnxruntime", "precision": "int8"}) as server:
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


def test_the_service_runs_what_auto_chooses_and_says_so(quantized: ModelPackage, astronaut_rgb: np.ndarray) -> None:
    """Default settings: the engine and precision ``select_variant`` picks for this host (OpenVINO
    int8 or bf16 on AMX, where their drift is within tolerance), reported by /readyz, /v1/models and
    /metrics, and answers within the recorded drift of fp32's."""
    chosen = select_variant(quantized).describe()
    faces = prepare_faces(astronaut_rgb, create_detector().detect(astronaut_rgb), quantized.manifest)
    fp32 = attack_scores(
        OnnxRuntimeEngine(quantized.onnx_path).run(np.stack([f.tensor for f in faces]))["logits"], quantized.manifest
    )
    ref = quantized.manifest.ref
    with running_server(quantized.path.parent.parent) as server:
        assert httpx.get(server.rest_url + "/readyz").json()["engines"] == {ref: chosen}
        (entry,) = httpx.get(server.rest_url + "/v1/models").json()["models"]
        assert entry["engine"] == chosen
        labels = {"model": ref, "engine": chosen["engine"], "precision": chosen["precision"]}
        assert metric(scrape(server.rest_url), "fsfm_model_engine", **labels) == 1
        answer = httpx.post(server.rest_url + "/v1/deepfake", files={"file": ("a.png", encode(astronaut_rgb, "PNG"))})
    (variant,) = [
        v for v in quantized.manifest.all_variants() if (v.precision, v.file) == (chosen["precision"], chosen["file"])
    ]
    allowed = max((check.max_abs_score_diff for check in variant.heldout), default=0.0)  # the reference: 0
    assert answer.json()["faces"][0]["score"] == pytest.approx(float(fp32[0]), abs=allowed + 1e-4)
