"""`fsfm analyze`: real photos in, per-face JSON out; bad files get one line each, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsfm.analysis import prepare_faces
from fsfm_cli import app
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import create_detector
from fsfm.imaging import read_image_file
from fsfm.scoring import attack_scores
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces
from tests.no_torch import run_without_torch
from tests.packages import make_tiny_package
from tests.test_imaging import png_bomb

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    make_tiny_package(repo, name="tiny-deepfake", task="deepfake")
    make_tiny_package(repo, name="tiny-liveness", task="liveness", seed=1)
    return repo


def analyze(*args: str) -> tuple[int, list | None, str]:
    result = CliRunner().invoke(app, ["analyze", *args])
    try:
        payload = json.loads(result.stdout)
    except json.JSONDecodeError:
        payload = None
    return result.exit_code, payload, result.stderr


def test_detect_only_finds_the_astronaut(mtcnn_dir, astronaut_path) -> None:
    code, payload, _ = analyze(str(astronaut_path), "--detect-only")
    assert code == 0
    (entry,) = payload
    assert entry["path"] == str(astronaut_path)
    (face,) = entry["faces"]
    assert set(face) == {"box", "landmarks", "detection_score"}
    assert_face_at(face["box"], face["landmarks"], ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS)
    assert face["detection_score"] >= 0.9


def test_scores_match_the_model_on_the_same_crop(mtcnn_dir, astronaut_path, models) -> None:
    code, payload, _ = analyze(str(astronaut_path), "--models", str(models), "--task", "liveness")
    assert code == 0
    (entry,) = payload
    assert entry["model"] == {"name": "tiny-liveness", "version": 1, "task": "liveness", "demo": False}
    (face,) = entry["faces"]
    assert face["label"] in {"spoof", "live"} and face["threshold"] == 0.5
    # Recompute independently of the CLI: the same detector, crop convention and ONNX file.
    from fsfm.package import ModelRepository

    package = ModelRepository(models).get("tiny-liveness")
    image = read_image_file(astronaut_path)
    prepared = prepare_faces(image, create_detector().detect(image), package.manifest)
    logits = OnnxRuntimeEngine(package.onnx_path).run(np.stack([prepared[0].tensor]))["logits"]
    assert face["score"] == pytest.approx(float(attack_scores(logits, package.manifest)[0]), abs=1e-6)
    assert entry["verdict"]["score"] == face["score"]


def test_group_photo_reports_every_face(mtcnn_dir, group_photo_path, models) -> None:
    code, payload, _ = analyze(str(group_photo_path), "--models", str(models), "--threshold", "0.0")
    assert code == 0
    faces = payload[0]["faces"]
    assert_group_faces([f["box"] for f in faces])
    assert all(f["label"] == "fake" and f["threshold"] == 0.0 for f in faces)  # everything >= 0


def test_tiny_faces_are_reported_not_judged(mtcnn_dir, astronaut_rgb, models, tmp_path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(astronaut_rgb).resize((128, 128)).save(small)  # face ~25 px < min 32
    code, payload, _ = analyze(str(small), "--models", str(models))
    assert code == 0
    (face,) = payload[0]["faces"]
    assert face["judged"] is False and face["reason"] == "face_too_small" and "score" not in face
    assert payload[0]["verdict"] == {"label": None, "score": None, "reason": "no_judged_face"}


def test_no_face_is_an_empty_list(mtcnn_dir, models, tmp_path) -> None:
    from skimage import data

    coffee = tmp_path / "coffee.jpg"
    Image.fromarray(data.coffee()).save(coffee)
    code, payload, _ = analyze(str(coffee), "--models", str(models))
    assert code == 0
    assert payload[0]["faces"] == [] and payload[0]["verdict"]["reason"] == "no_face"


def test_bad_files_get_one_line_each_and_a_nonzero_exit(mtcnn_dir, astronaut_path, tmp_path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    full = tmp_path / "full.jpg"
    Image.open(astronaut_path).save(full, quality=95)
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20_000))
    missing = tmp_path / "missing.jpg"
    bad = [missing, text, truncated, empty, bomb]
    code, payload, stderr = analyze(*map(str, bad), str(astronaut_path), "--detect-only")
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == len(bad) and "Traceback" not in stderr
    for path, line in zip(bad, lines):
        assert line.startswith(f"{path}: ")
    codes = [entry["error"]["code"] for entry in payload[:-1]]
    assert codes == ["not_found", "unsupported_type", "corrupt", "empty", "too_large"]
    assert len(payload[-1]["faces"]) == 1  # the good file is still analysed


def test_unknown_model_is_a_clear_error(mtcnn_dir, astronaut_path, models) -> None:
    code, _, stderr = analyze(str(astronaut_path), "--models", str(models), "--model", "nope")
    assert code == 2 and stderr.startswith("error: no model named 'nope'") and "Traceback" not in stderr


def test_analyze_runs_without_torch(mtcnn_dir, astronaut_path, models, tmp_path) -> None:
    result = run_without_torch(
        tmp_path, ["-m", "fsfm_cli", "analyze", str(astronaut_path), "--models", str(models)], cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert len(entry["faces"]) == 1 and 0.0 <= entry["faces"][0]["score"] <= 1.0
    probe = run_without_torch(tmp_path, ["-c", "import torch"])
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the block is real
