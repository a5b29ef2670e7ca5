"""Face tracks end to end, on a real ``fsfm serve`` process that writes nothing to its working or temp
directory: a video of two people, one of them manipulated in frames 20-40 (``tests/two_people.py``),
judged by a model that scores a crop from its pixels alone (``tests/colour_model.py``). Over REST, gRPC
``AnalyzeVideo`` and a gRPC ``Analyze`` stream of the same frames: two tracks, the manipulated one with
a segment over the manipulated frames and the verdict, the other with no segment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from fsfm.imaging import ImageLimits
from service.grpc_stubs import pb, pb_grpc
from service.media import decode_video
from tests.colour_model import make_colour_package
from tests.servers import RunningServer, running_server, writes_nothing
from tests.two_people import FPS, FRAMES, MANIPULATED, encode_mp4, two_people_frames

MODEL = "colour-deepfake"
RIGHT_HALF_X = 240  # the manipulated person stays in the right half of the frame, the other in the left


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("models")
    make_colour_package(repository, name=MODEL)
    return repository


@pytest.fixture(scope="module")
def server(models, mtcnn_dir, tmp_path_factory) -> Iterator[RunningServer]:
    """Every face of the video judged (2 per frame), on a server that must write no file."""
    settings = {"max_faces_per_request": 2 * FRAMES, "max_video_frames": FRAMES}
    with writes_nothing(tmp_path_factory.mktemp("server")) as (cwd, env):
        with running_server(models, settings, cwd=cwd, env=env) as running:
            yield running


@pytest.fixture(scope="module")
def video(astronaut_rgb, group_photo_path) -> bytes:
    group = np.asarray(Image.open(group_photo_path).convert("RGB"))
    return encode_mp4(two_people_frames(astronaut_rgb, group))


@pytest.fixture(scope="module")
def stub(server) -> Iterator[pb_grpc.FaceSecurityStub]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FaceSecurityStub(channel)


def overlaps_manipulation(start_index: int, end_index: int) -> bool:
    return start_index <= MANIPULATED[-1] and end_index >= MANIPULATED[0]


def test_a_video_of_two_people_gets_two_tracks_and_the_manipulated_one_decides(server, video) -> None:
    response = httpx.post(
        server.rest_url + "/v1/deepfake", files={"file": ("two.mp4", video)}, data={"fps": str(FPS)}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [frame["index"] for frame in body["frames"]] == list(range(FRAMES))
    tracks = {track["track_id"]: track for track in body["tracks"]}
    assert sorted(tracks) == [1, 2]

    # Every judged face names its track; each track holds exactly its faces, one per frame.
    faces_of: dict[int, list[tuple[int, list[float], float]]] = {1: [], 2: []}
    for frame in body["frames"]:
        assert len(frame["faces"]) == 2
        for face in frame["faces"]:
            faces_of[face["track_id"]].append((frame["index"], face["box"], face["score"]))
    for track_id, track in tracks.items():
        assert [(f["index"], f["box"], f["score"]) for f in track["frames"]] == faces_of[track_id]
        assert track["score"] == pytest.approx(np.mean([f["score"] for f in track["frames"]]), abs=1e-6)
        assert track["peak_score"] >= track["score"] - 1e-6
        assert track["label"] == ("fake" if track["peak_score"] >= body["threshold"] else "real")
    # One person per track: all in the right half, or all in the left.
    (manipulated,) = [t for t in tracks.values() if t["frames"][0]["box"][0] > RIGHT_HALF_X]
    (other,) = [t for t in tracks.values() if t is not manipulated]
    assert all(f["box"][0] > RIGHT_HALF_X for f in manipulated["frames"])
    assert all(f["box"][2] < RIGHT_HALF_X for f in other["frames"])

    # The manipulated person: one segment over the manipulated frames (the trailing smoothing window
    # may open it a frame late and close it a frame late); the other: none.
    (segment,) = manipulated["segments"]
    assert overlaps_manipulation(segment["start_index"], segment["end_index"])
    assert MANIPULATED[0] <= segment["start_index"] <= MANIPULATED[0] + 2
    assert MANIPULATED[-1] <= segment["end_index"] <= MANIPULATED[-1] + 2
    assert segment["start_s"] == pytest.approx(segment["start_index"] / FPS, abs=1e-3)
    assert segment["peak_score"] > 0.9
    assert other["segments"] == [] and other["label"] == "real"
    # Manipulated for part of the video: flagged by its peak, though its mean stays under the threshold.
    assert manipulated["label"] == "fake" and manipulated["score"] < body["threshold"] < manipulated["peak_score"]
    # The verdict: the most suspicious track, not the mean over everyone.
    assert body["verdict"] == {"label": "fake", "score": manipulated["peak_score"], "track_id": manipulated["track_id"]}
    assert manipulated["score"] > other["score"]


def test_analyze_video_over_grpc_gets_the_same_tracks_as_rest(server, stub, video) -> None:
    answer = stub.AnalyzeVideo(
        pb.AnalyzeVideoRequest(video=video, options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE), fps=FPS), timeout=120
    )
    rest = httpx.post(
        server.rest_url + "/v1/deepfake", files={"file": ("two.mp4", video)}, data={"fps": str(FPS)}, timeout=120
    ).json()
    assert len(answer.tracks) == len(rest["tracks"]) == 2
    for track, expected in zip(answer.tracks, rest["tracks"], strict=True):
        assert (track.track_id, track.label) == (expected["track_id"], expected["label"])
        assert track.score == pytest.approx(expected["score"], abs=1e-5)
        assert track.peak_score == pytest.approx(expected["peak_score"], abs=1e-5)
        assert [f.index for f in track.frames] == [f["index"] for f in expected["frames"]]
        assert [(s.start_index, s.end_index) for s in track.segments] == [
            (s["start_index"], s["end_index"]) for s in expected["segments"]
        ]
    assert [[f.track_id for f in frame.faces] for frame in answer.frames] == [
        [f["track_id"] for f in frame["faces"]] for frame in rest["frames"]
    ]
    assert answer.verdict.track_id == rest["verdict"]["track_id"]
    assert answer.verdict.score == pytest.approx(rest["verdict"]["score"], abs=1e-5)


def test_a_stream_of_the_same_frames_gets_running_tracks_and_segments(stub, video) -> None:
    decoded = list(decode_video(video, ImageLimits(), 60, FRAMES, FPS))
    assert len(decoded) == FRAMES

    def frames() -> Iterator[pb.Frame]:
        for i, (_, _, rgb) in enumerate(decoded):
            raw = pb.RawImage(width=rgb.shape[1], height=rgb.shape[0], rgb=rgb.tobytes())
            options = pb.AnalysisOptions(task=pb.TASK_DEEPFAKE) if i == 0 else None
            yield pb.Frame(image=pb.Image(raw=raw), options=options, index=1000 + i, time_s=i / FPS)

    results = list(stub.Analyze(frames(), timeout=120))
    assert [r.sequence for r in results] == list(range(FRAMES))
    manipulated_id = next(f.track_id for f in results[0].analysis.faces if f.box.x1 > RIGHT_HALF_X)
    scores: dict[int, list[float]] = {1: [], 2: []}
    for i, result in enumerate(results):
        faces = {face.track_id: face for face in result.analysis.faces}
        assert sorted(faces) == [1, 2], i  # the same two people in every frame
        assert faces[manipulated_id].box.x1 > RIGHT_HALF_X
        for track_id, face in faces.items():
            scores[track_id].append(face.score)
        tracks = {track.track_id: track for track in result.tracks}
        assert sorted(tracks) == [1, 2], i
        for track_id, track in tracks.items():
            assert track.frames == i + 1
            assert track.score == pytest.approx(np.mean(scores[track_id]), abs=1e-6)  # the running mean
            if i < MANIPULATED[0]:
                assert not track.segments, i
    last = {track.track_id: track for track in results[-1].tracks}
    (segment,) = last[manipulated_id].segments
    assert overlaps_manipulation(segment.start_index - 1000, segment.end_index - 1000)  # the client's numbering
    assert segment.start_s == pytest.approx((segment.start_index - 1000) / FPS)
    (other_id,) = set(last) - {manipulated_id}
    assert not last[other_id].segments
    # Mid-manipulation, the segment so far is open and ends at the current frame.
    (open_segment,) = next(t for t in results[30].tracks if t.track_id == manipulated_id).segments
    assert open_segment.end_index == 1030
    # The stream's verdict: the most suspicious track over its window (the last 30 frames: 21 manipulated).
    verdict = results[-1].aggregate.verdict
    assert (verdict.track_id, verdict.label) == (manipulated_id, "fake")
