"""`fsfm analyze`: real photos, videos and folders in, the REST response's JSON out, one line per file as it
finishes; bad files get an error object and one line each on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsfm.analysis import prepare_faces
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import create_detector
from fsfm.imaging import ImageLimits, read_image_file
from fsfm.scoring import attack_scores
from fsfm_cli import app
from service.media import decode_video
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces
from tests.no_torch import run_without_torch
from tests.packages import make_tiny_package
from tests.references import make_reference
from tests.servers import running_server
from tests.test_imaging import png_bomb
from tests.test_rest import answer, assert_faces_match, make_video

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    make_tiny_package(repo, name="tiny-deepfake", task="deepfake")
    make_tiny_package(repo, name="tiny-liveness", task="liveness", seed=1)
    return repo


def analyze(*args: str) -> tuple[int, list[dict] | None, str]:
    """Exit code, the objects of stdout's JSON Lines (one per line, each complete), stderr."""
    result = CliRunner().invoke(app, ["analyze", *args])
    try:
        payload = [json.loads(line) for line in result.stdout.splitlines()]
    except json.JSONDecodeError:
        payload = None
    return result.exit_code, payload, result.stderr


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsfm_cli", "analyze", *args]


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


def test_evidence_is_added_when_asked_and_unknown_kinds_are_an_option_error(mtcnn_dir, astronaut_path, models) -> None:
    import hashlib

    code, payload, _ = analyze(str(astronaut_path), "--models", str(models), "--evidence", "robustness,audit")
    assert code == 0
    (entry,) = payload
    assert entry["audit"]["input_sha256"] == hashlib.sha256(astronaut_path.read_bytes()).hexdigest()
    assert set(entry["faces"][0]["evidence"]) == {"robustness"}
    code, _, stderr = analyze(str(astronaut_path), "--models", str(models), "--evidence", "saliency")
    assert code == 2 and "saliency" in stderr
    small_queue = CliRunner().invoke(
        app,
        ["analyze", str(astronaut_path), "--models", str(models), "--evidence", "heatmap"],
        env={"FSFM_MAX_QUEUE_SIZE": "48"},  # under the heatmap's 49 inferences per face
    )
    assert small_queue.exit_code == 2 and "49 inferences per face" in small_queue.stderr


def test_group_photo_reports_every_face(mtcnn_dir, group_photo_path, models) -> None:
    code, payload, _ = analyze(str(group_photo_path), "--models", str(models), "--threshold", "0.0")
    assert code == 0
    faces = payload[0]["faces"]
    assert_group_faces([f["box"] for f in faces])
    assert all(f["label"] == "fake" and f["threshold"] == 0.0 for f in faces)  # everything >= 0


def test_tiny_faces_are_reported_not_judged(mtcnn_dir, astronaut_rgb, models, tmp_path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(astronaut_rgb).resize((128, 128)).save(small)  # face ~25 px < min 32
    # Searched from 20 pixels: the default (40) would not even report it.
    code, payload, _ = analyze(str(small), "--models", str(models), "--min-face-size", "20")
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
    for path, line in zip(bad, lines, strict=False):
        assert line.startswith(f"{path}: ")
    for entry in payload[:-1]:  # REST's error object
        assert set(entry) == {"path", "error"} and set(entry["error"]) == {"reason", "message"}
    reasons = [entry["error"]["reason"] for entry in payload[:-1]]
    assert reasons == ["not_found", "unsupported_type", "corrupt", "empty", "too_large"]
    assert len(payload[-1]["faces"]) == 1  # the good file is still analysed


def test_unknown_model_is_a_clear_error(mtcnn_dir, astronaut_path, models) -> None:
    code, _, stderr = analyze(str(astronaut_path), "--models", str(models), "--model", "nope")
    assert code == 2 and stderr.startswith("error: no model named 'nope'") and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "{tmp}/nowhere"], "error: model repository {tmp}/nowhere does not exist"),
        (["--task", "deepfake", "--model", "tiny-liveness"], "error: model tiny-liveness:1 is a liveness model"),
        (["--target-fpr", "0.01"], "error: no operating point"),
        (["--fps", "1000"], "error: fps is 1000.0"),
    ],
)
def test_setup_errors_are_one_line_and_exit_2(mtcnn_dir, astronaut_path, models, tmp_path, args, message) -> None:
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, payload, stderr = analyze(str(astronaut_path), "--models", str(models), *args)
    assert code == 2 and stderr.startswith(message.format(tmp=tmp_path)), stderr
    assert len(stderr.strip().splitlines()) == 1 and payload == []


def test_a_named_model_judges_its_own_task(mtcnn_dir, astronaut_path, models) -> None:
    code, payload, _ = analyze(str(astronaut_path), "--models", str(models), "--model", "tiny-liveness")
    assert code == 0 and payload[0]["model"]["task"] == "liveness"
    assert payload[0]["verdict"]["label"] in {"spoof", "live"}


def test_analyze_runs_without_torch(mtcnn_dir, astronaut_path, models, tmp_path) -> None:
    result = run_without_torch(
        tmp_path, ["-m", "fsfm_cli", "analyze", str(astronaut_path), "--models", str(models)], cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    entry = json.loads(line)
    assert len(entry["faces"]) == 1 and 0.0 <= entry["faces"][0]["score"] <= 1.0
    probe = run_without_torch(tmp_path, ["-c", "import torch"])
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the block is real


# ---- folders, videos, output formats: the service's analysis on local files -------------------


def test_a_folder_is_walked_recursively_and_skips_what_is_not_media(
    mtcnn_dir, astronaut_rgb, astronaut_path, models, tmp_path
) -> None:
    (tmp_path / "photos" / "b" / "c").mkdir(parents=True)
    Image.fromarray(astronaut_rgb).save(tmp_path / "photos" / "b" / "c" / "deep.png")
    Image.fromarray(astronaut_rgb).save(tmp_path / "photos" / "b" / "face.webp")
    (tmp_path / "photos" / "a.jpg").write_bytes(astronaut_path.read_bytes())
    (tmp_path / "photos" / "notes.txt").write_text("not media")
    (tmp_path / "photos" / "b" / "README").write_bytes(b"")
    named = tmp_path / "named.txt"
    named.write_text("named on the command line, so an error")
    code, payload, stderr = analyze(str(tmp_path / "photos"), str(named), "--models", str(models))
    assert code == 1
    assert stderr.strip().splitlines() == [f"{named}: not a JPEG, PNG or WebP image, nor an MP4 or WebM video"]
    photos = tmp_path / "photos"
    assert [entry["path"] for entry in payload] == [
        str(photos / "a.jpg"),
        str(photos / "b" / "c" / "deep.png"),
        str(photos / "b" / "face.webp"),
        str(named),
    ]
    for entry in payload[:3]:
        assert entry["media"] == "image" and len(entry["faces"]) == 1 and entry["verdict"]["score"] is not None
    assert payload[3]["error"]["reason"] == "unsupported_type"


@pytest.fixture(scope="module")
def astronaut_clip(astronaut_rgb, tmp_path_factory) -> Path:
    """An MP4, 2 s at 5 fps: the astronaut, brightening, then a face-free picture (same size)."""
    from skimage import data

    faces = [np.clip(astronaut_rgb * (0.6 + 0.08 * k), 0, 255).astype(np.uint8) for k in range(6)]
    coffee = np.asarray(Image.fromarray(data.coffee()).resize(astronaut_rgb.shape[1::-1]))
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    path.write_bytes(make_video(faces + [coffee] * 4, "mp4", "mpeg4"))
    return path


@pytest.mark.parametrize("sampling", [["--max-frames", "4"], ["--fps", "2.5"]])
def test_a_video_gets_its_frames_and_a_video_verdict(mtcnn_dir, astronaut_clip, models, sampling) -> None:
    code, payload, _ = analyze(str(astronaut_clip), "--models", str(models), *sampling)
    assert code == 0
    (entry,) = payload
    assert entry["media"] == "video" and "faces" not in entry
    answer_keys = {
        *("request_id", "model", "media", "threshold", "threshold_source"),
        *("frames", "tracks", "verdict", "timing_ms"),
    }
    assert set(entry) == {"path", *answer_keys}
    # The frames the service samples, decoded here by the same code, each judged locally.
    max_frames = int(sampling[1]) if sampling[0] == "--max-frames" else 64
    fps = float(sampling[1]) if sampling[0] == "--fps" else None
    expected = list(decode_video(astronaut_clip.read_bytes(), ImageLimits(), 60, max_frames, fps))
    assert [(f["index"], f["time_s"]) for f in entry["frames"]] == [(index, t) for index, t, _ in expected]
    reference = make_reference(models, "tiny-deepfake")
    worst_per_frame = []
    for frame, (_, _, image) in zip(entry["frames"], expected, strict=True):
        want = reference(image)
        assert_faces_match(frame["faces"], want)
        if want.verdict.score is not None:
            worst_per_frame.append(want.verdict.score)
    assert 0 < len(worst_per_frame) < len(expected)  # some frames with the face, some without
    # One person, one track: its mean is the mean over the frames with the face.
    assert [track["track_id"] for track in entry["tracks"]] == [entry["verdict"]["track_id"]] == [1]
    assert entry["verdict"]["score"] == pytest.approx(float(np.mean(worst_per_frame)), abs=1e-5)


def test_detect_only_reads_videos_too(mtcnn_dir, astronaut_clip) -> None:
    code, payload, _ = analyze(str(astronaut_clip), "--detect-only", "--max-frames", "3")
    assert code == 0
    (entry,) = payload
    assert set(entry) == {"path", "media", "frames"} and len(entry["frames"]) == 3
    assert all(set(face) == {"box", "landmarks", "detection_score"} for f in entry["frames"] for face in f["faces"])


def test_format_json_writes_one_array(mtcnn_dir, astronaut_path, tmp_path) -> None:
    missing = tmp_path / "missing.png"
    args = ["analyze", str(astronaut_path), str(missing), "--detect-only", "--format", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    first, second = json.loads(result.stdout)
    assert first["path"] == str(astronaut_path) and len(first["faces"]) == 1
    assert second == {"path": str(missing), "error": {"reason": "not_found", "message": f"no such file: {missing}"}}


def test_json_lines_are_written_as_each_file_finishes(mtcnn_dir, astronaut_path, models, tmp_path) -> None:
    """The second input is a FIFO that gets its image only after the first file's line has been read:
    the line came while the command was still waiting for the second file."""
    fifo = tmp_path / "later.jpg"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        cli_command(str(astronaut_path), str(fifo), "--models", str(models)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert lines and json.loads(lines[0])["path"] == str(astronaut_path), process.stderr.read() if not lines else ""
        assert process.poll() is None  # still waiting for the FIFO
        fifo.write_bytes(astronaut_path.read_bytes())
        rest, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    (second,) = rest.splitlines()
    assert json.loads(second)["path"] == str(fifo) and json.loads(second)["faces"][0]["score"] is not None


def test_the_progress_bar_goes_to_a_terminal_on_stderr_only(mtcnn_dir, astronaut_path, tmp_path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.jpg").write_bytes(astronaut_path.read_bytes())
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            cli_command(str(folder), "--detect-only"), stdout=subprocess.PIPE, stderr=terminal, timeout=120
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert result.returncode == 0
    assert [json.loads(line)["path"] for line in result.stdout.decode().splitlines()] == [
        str(folder / f"{k}.jpg") for k in range(3)
    ]
    assert b"analysing" in seen and b"3/3" in seen


def test_the_cli_answers_as_the_rest_api_does(mtcnn_dir, astronaut_path, models) -> None:
    """The same image and package through a real ``fsfm serve`` and through ``fsfm analyze``: the same
    fields, the same faces and scores."""
    code, payload, _ = analyze(str(astronaut_path), "--models", str(models), "--task", "liveness")
    assert code == 0
    (entry,) = payload
    with running_server(models, grpc=False) as server:
        with astronaut_path.open("rb") as image:
            response = httpx.post(server.rest_url + "/v1/liveness", files={"file": image}, timeout=60)
    body = answer(response)
    assert set(entry) == {"path", *body}
    for key in ("model", "media", "threshold", "threshold_source", "verdict", "faces"):
        assert entry[key] == body[key], key
    assert set(entry["timing_ms"]) == set(body["timing_ms"])
