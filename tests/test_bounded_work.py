"""Bounded work per request: detection on a bounded copy, a pixel budget for videos decoded frame by
frame, a cap on the faces judged, and the hostile inputs of ``benchmarks/hostile_inputs.py`` answered
by a real ``fsfm serve`` on loopback within a memory bound (peak RSS growth, read from /proc).

Wall-clock figures go to the benchmark, not to asserts here.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest

from benchmarks.hostile_inputs import HOSTILE_STATUS, hostile_inputs, still_mp4
from fsfm.analysis import FACE_LIMIT, LargestFaces, PreparedFace, prepare_faces
from fsfm.face.bounded import BoundedDetector, downscale
from fsfm.face.detector import DETECT_MAX_SIDE, DetectorConfig, create_detector
from fsfm.face.mtcnn import MtcnnDetector
from fsfm.face.types import DetectedFace
from fsfm.imaging import ImageLimits, decode_image
from fsfm.package import ModelPackage
from service.media import decode_video
from service.settings import Settings
from tests.faces import assert_group_faces, iou
from tests.packages import make_tiny_package
from tests.servers import RunningServer, running_server

MAX_GROWTH_MIB = 300  # peak RSS growth of the server per hostile request (issue 12)


# ---- detection on a bounded copy -------------------------------------------------------------


# MTCNN's landmarks of the tilted second face move by 13% of its width between the two resolutions
# (they miss its features at both; BlazeFace's, placed by O-Net on BlazeFace's square, do not).
@pytest.mark.parametrize(("kind", "landmark_tolerance"), [("blazeface", 0.1), ("mtcnn", 0.15)])
def test_a_large_photo_is_searched_on_a_copy_and_its_faces_found_in_full_resolution(
    kind: str, landmark_tolerance: float, group_photo_path: Path
) -> None:
    group = decode_image(group_photo_path.read_bytes())
    # The whole 1280x886 photo, as it is: it was not much larger than the copy.
    native = create_detector(DetectorConfig(kind=kind, threads=1, max_side=1280)).detect(group)
    large = cv2.resize(group, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # 3840x2658
    faces = create_detector(DetectorConfig(kind=kind, threads=1)).detect(large)
    assert_group_faces([face.box / 3 for face in faces])
    for expected in native:
        found = max(faces, key=lambda face: iou(face.box / 3, expected.box))
        assert iou(found.box / 3, expected.box) >= 0.85
        assert np.abs(found.landmarks / 3 - expected.landmarks).max() <= landmark_tolerance * expected.width


def test_an_image_within_the_bound_is_searched_as_it_is(mtcnn_dir: Path, astronaut_rgb: np.ndarray) -> None:
    copy, scale = downscale(astronaut_rgb, DETECT_MAX_SIDE)
    assert copy is astronaut_rgb and scale.tolist() == [1.0, 1.0]
    mtcnn = MtcnnDetector(mtcnn_dir, threads=1)
    bounded, plain = BoundedDetector(mtcnn).detect(astronaut_rgb), mtcnn.detect(astronaut_rgb)
    assert [f.box.tolist() for f in bounded] == [f.box.tolist() for f in plain]


def test_r_net_and_o_net_in_batches_find_what_one_run_finds(
    mtcnn_dir: Path, group_photo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsfm.face import mtcnn

    group = decode_image(group_photo_path.read_bytes())  # about 900 R-Net candidates
    detector = MtcnnDetector(mtcnn_dir, threads=1)
    batched = detector.detect(group)
    monkeypatch.setattr(mtcnn, "NET_BATCH", 1_000_000)
    whole = detector.detect(group)
    assert len(batched) == len(whole) == 6
    for a, b in zip(batched, whole, strict=True):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


def test_the_service_and_prepare_detect_alike() -> None:
    """fsfm serve and fsfm analyze (Settings) and fsfm prepare search faces with the same defaults: a
    model meets the crops it was trained on (a min_face_size of 20 against 40 moved scores by 0.057)."""
    from training.prepare import PrepareConfig

    served, prepared, default = Settings().detector_config(), PrepareConfig(), DetectorConfig()
    assert served.max_side == prepared.detect_max_side == default.max_side == DETECT_MAX_SIDE
    assert served.kind == prepared.detector == default.kind == "blazeface"
    assert served.min_face_size == prepared.min_face_size == default.min_face_size
    assert served.score_threshold == prepared.score_threshold == default.score_threshold


# ---- the face cap --------------------------------------------------------------------------------


def face(side: float, x: float = 0.0) -> DetectedFace:
    return DetectedFace(np.array([x, 0, x + side, side], np.float32), np.zeros((5, 2), np.float32), 0.99)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    return make_tiny_package(tmp_path_factory.mktemp("models"), name="tiny-deepfake", version=1, seed=0)


def test_the_largest_faces_keep_their_crops_across_frames(package: ModelPackage, astronaut_rgb: np.ndarray) -> None:
    manifest = package.manifest
    largest = LargestFaces(3)
    frames = [
        prepare_faces(astronaut_rgb, [face(40), face(60, 100)], manifest, largest),
        prepare_faces(astronaut_rgb, [face(50), face(60, 100), face(90, 200)], manifest, largest),
        prepare_faces(astronaut_rgb, [face(10), face(45)], manifest, largest),
    ]
    judged = [(k, p.face.width) for k, faces in enumerate(frames) for p in faces if p.tensor is not None]
    assert judged == [(0, 60), (1, 60), (1, 90)]  # of the two 60s, both fit; 40, 50 and 45 are pushed out
    skipped = {(k, p.face.width): p.skip_reason for k, faces in enumerate(frames) for p in faces if p.tensor is None}
    assert skipped == {(0, 40): FACE_LIMIT, (1, 50): FACE_LIMIT, (2, 10): "face_too_small", (2, 45): FACE_LIMIT}


def test_of_equal_faces_the_first_stays() -> None:
    largest = LargestFaces(1)
    first, second = PreparedFace(face(50), np.zeros(1)), PreparedFace(face(50, 100), np.zeros(1))
    largest.keep(first)
    assert not largest.admits(second.face)
    assert largest.admits(face(51))


def test_the_cap_never_exceeds_the_queue() -> None:
    assert Settings().faces_per_request() == 64
    assert Settings(max_queue_size=16).faces_per_request() == 16


# ---- videos: frame by frame, within a pixel budget -------------------------------------------------


def test_a_video_is_decoded_as_it_is_read_within_its_pixel_budget() -> None:
    video = still_mp4(side=256, frames=16)
    frames = decode_video(video, ImageLimits(), 60, 16, max_pixels=5 * 256 * 256 + 1)
    assert not isinstance(frames, list)
    first = next(frames)
    assert first.rgb.shape == (256, 256, 3) and first.index == 0
    assert len([first, *frames]) == 5  # evenly spread over the clip, as max_frames=5 would be
    expected = [f.index for f in decode_video(video, ImageLimits(), 60, 5)]
    assert [f.index for f in decode_video(video, ImageLimits(), 60, 16, max_pixels=5 * 256 * 256)] == expected
    assert len(list(decode_video(video, ImageLimits(), 60, 16, max_pixels=1))) == 1  # one frame at least


# ---- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(package: ModelPackage, mtcnn_dir: Path) -> RunningServer:
    models = package.path.parents[1]
    with running_server(models, {"request_timeout_s": 120}, grpc=False) as running:  # default limits otherwise
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpx.Client:
    with httpx.Client(base_url=server.rest_url, timeout=180) as http:
        yield http


def memory_mib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) // 1024 for line in lines if line.startswith(("VmRSS", "VmHWM"))}


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux's clear_refs "5"); returns that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_mib(pid)["VmRSS"]


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    return hostile_inputs()


@pytest.mark.parametrize("name", list(HOSTILE_STATUS))
def test_hostile_inputs_get_their_answer_within_the_memory_bound(
    server: RunningServer, client: httpx.Client, hostile: dict[str, bytes], name: str
) -> None:
    data = hostile[name]
    pid = server.process.pid
    before = reset_peak(pid)
    response = client.post("/v1/deepfake", files={"file": ("upload", data)})
    after = memory_mib(pid)
    assert response.status_code == HOSTILE_STATUS[name], response.text
    assert after["VmHWM"] - before <= MAX_GROWTH_MIB, (name, before, after)
    assert after["VmRSS"] - before <= 96, (name, before, after)  # given back, not kept
    body = response.json()
    if response.status_code == 400:
        assert body["error"]["reason"] == "corrupt"
        assert "<" not in body["error"]["message"] and "0x" not in body["error"]["message"]
    elif body["media"] == "video":
        assert 1 <= len(body["frames"]) < 64  # the pixel budget sampled fewer frames than max_video_frames


def group_video(group_photo_path: Path, frames: int) -> bytes:
    """An MP4 of the six-person group photo (halved: 640x442) repeated ``frames`` times."""
    group = cv2.resize(decode_image(group_photo_path.read_bytes()), (640, 442), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 640, 442, "yuv420p"
        for _ in range(frames):
            output.mux(stream.encode(av.VideoFrame.from_ndarray(group, format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


def test_a_video_with_more_faces_than_the_queue_is_answered_on_an_idle_server(
    client: httpx.Client, group_photo_path: Path
) -> None:
    settings = Settings()
    video = group_video(group_photo_path, settings.max_video_frames)  # 64 frames x 6 faces > max_queue_size
    response = client.post("/v1/deepfake", files={"file": ("group.mp4", video)})
    assert response.status_code == 200, response.text
    faces = [f for frame in response.json()["frames"] for f in frame["faces"]]
    assert len(faces) > settings.max_queue_size
    judged = [f for f in faces if "score" in f]
    limited = [f for f in faces if f.get("reason") == FACE_LIMIT]
    assert len(judged) == settings.max_faces_per_request and len(judged) + len(limited) == len(faces)
    area = lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])  # noqa: E731
    assert min(map(area, judged)) >= max(map(area, limited)) - 1.0  # the largest first (boxes are rounded)
    assert all(f["judged"] is False for f in limited)
