"""The gRPC door on real ``fsfm serve`` processes on loopback, serving tiny exported ViTs, over real
channels; plus the stream aggregate's unit test and the TLS / health lifecycle in-process.

Every answer is checked against an independent computation: the same detector, crop convention and
ONNX file run here through ``tests.references.analyze_locally`` (no batcher, no core).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image
from skimage import data as skdata

from fsfm.analysis import FaceResult
from fsfm.face.types import DetectedFace
from fsfm.imaging import decode_image
from fsfm.package import ModelRepository
from fsfm.package.manifest import DEMO_NOTICE, OperatingPoint, Thresholds
from service.core import AnalysisCore, FrameReport, StreamAggregate
from service.grpc_messages import aggregate_message
from service.grpc_server import REASON_KEY, RETRY_AFTER_KEY, start_grpc_server
from service.grpc_stubs import SERVICE_NAME, pb, pb_grpc
from service.settings import Settings
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces
from tests.no_torch import torchless_env
from tests.packages import make_tiny_package
from tests.references import ImageAnalysis, Reference, encode, make_reference
from tests.servers import REPO_ROOT, RunningServer, metric, running_server, scrape
from tests.test_rest import make_video

API_KEY = "grpc-key"
KEYED = (("x-api-key", API_KEY),)
MAX_MESSAGE = 2 * 1024 * 1024
DEEPFAKE = "tiny-deepfake:1"  # demo model, default threshold 0.4, operating point fpr_1pct
LIVENESS = "tiny-liveness:1"
SLOW_QUEUE = 16  # the slow server's queue: faces, at most


# ---- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    make_tiny_package(
        repo,
        name="tiny-deepfake",
        seed=0,
        demo=True,
        thresholds=Thresholds(
            default=0.4, operating_points=[OperatingPoint(name="fpr_1pct", threshold=0.8, target_fpr=0.01)]
        ),
    )
    make_tiny_package(repo, name="tiny-liveness", task="liveness", seed=1)
    return repo


@pytest.fixture(scope="module")
def server(models, mtcnn_dir) -> Iterator[RunningServer]:
    """API keys on, a small gRPC message limit, batching as in production."""
    settings = {"api_keys": [API_KEY], "max_grpc_message_bytes": MAX_MESSAGE, "max_queue_delay_ms": 5}
    with running_server(models, settings) as running:
        yield running


@pytest.fixture(scope="module")
def slow_server(models, mtcnn_dir, tmp_path_factory) -> Iterator[RunningServer]:
    """Faces wait a minute for a batch that never fills, in a small queue: work stays queued until
    it is cancelled or its deadline passes. Runs without torch, as the slim serving image does."""
    settings = {"max_queue_delay_ms": 60_000, "max_batch_size": 64, "max_queue_size": SLOW_QUEUE}
    with running_server(models, settings, env=torchless_env(tmp_path_factory.mktemp("torchless"))) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server) -> Iterator[pb_grpc.FaceSecurityStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FaceSecurityStub(channel)


@pytest.fixture(scope="module")
def slow_stub(slow_server) -> Iterator[pb_grpc.FaceSecurityStub]:
    with grpc.insecure_channel(slow_server.grpc_target) as channel:
        yield pb_grpc.FaceSecurityStub(channel)


@pytest.fixture(scope="module")
def reference(models, mtcnn_dir) -> Reference:
    return make_reference(models, DEEPFAKE)


def options(task: int = pb.TASK_DEEPFAKE, **fields: object) -> pb.AnalysisOptions:
    return pb.AnalysisOptions(task=task, **fields)


def image_request(data: bytes | pb.RawImage, task: int = pb.TASK_DEEPFAKE, **fields: object) -> pb.AnalyzeImageRequest:
    image = pb.Image(raw=data) if isinstance(data, pb.RawImage) else pb.Image(encoded=data)
    return pb.AnalyzeImageRequest(image=image, options=options(task, **fields))


def raw(image: np.ndarray) -> pb.RawImage:
    return pb.RawImage(width=image.shape[1], height=image.shape[0], rgb=image.tobytes())


def assert_faces_match(faces: Iterable[pb.Face], expected: ImageAnalysis, tolerance: float = 1e-6) -> None:
    """The server's faces are the reference's: same boxes and landmarks, scores, labels, thresholds."""
    faces = list(faces)
    assert len(faces) == len(expected.faces)
    for face, want in zip(faces, expected.faces, strict=False):
        assert [face.box.x1, face.box.y1, face.box.x2, face.box.y2] == pytest.approx(want.face.box.tolist(), abs=1e-3)
        assert [c for p in face.landmarks for c in (p.x, p.y)] == pytest.approx(want.face.landmarks.ravel(), abs=1e-3)
        assert face.judged and face.score == pytest.approx(want.score, abs=tolerance)
        assert (face.label, face.threshold) == (want.label, pytest.approx(want.threshold))


def status_of(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def reason(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(REASON_KEY)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def gauge(server: RunningServer, name: str, **labels: str) -> float:
    return metric(scrape(server.rest_url), name, **labels)


def assert_still_serving(stub: pb_grpc.FaceSecurityStub, astronaut_jpeg: bytes) -> None:
    (face,) = stub.AnalyzeImage(image_request(astronaut_jpeg), metadata=KEYED, timeout=30).faces
    assert face.judged


# ---- results on real photos ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "ref", "labels"),
    [
        (pb.TASK_DEEPFAKE, DEEPFAKE, {"fake", "real"}),
        (pb.TASK_LIVENESS, LIVENESS, {"spoof", "live"}),
    ],
)
def test_the_astronaut_gets_her_face_and_the_onnx_runtime_score(
    stub, astronaut_jpeg, reference, task, ref, labels
) -> None:
    answer = stub.AnalyzeImage(image_request(astronaut_jpeg, task), metadata=KEYED, timeout=30)
    (face,) = answer.faces
    assert_face_at(
        [face.box.x1, face.box.y1, face.box.x2, face.box.y2],
        [[p.x, p.y] for p in face.landmarks],
        ASTRONAUT_FACE_BOX,
        ASTRONAUT_LANDMARKS,
    )
    assert face.detection_score >= 0.9 and face.label in labels and not face.reason
    assert_faces_match(answer.faces, reference(decode_image(astronaut_jpeg), ref))
    name, version = ref.split(":")
    notice = DEMO_NOTICE if ref == DEEPFAKE else ""  # a demo package without a description: the generic notice
    assert answer.model == pb.ModelInfo(name=name, version=int(version), task=task, demo=ref == DEEPFAKE, notice=notice)
    assert answer.verdict == pb.Verdict(label=face.label, score=face.score)
    assert answer.threshold_source == "default" and len(answer.request_id) == 32
    assert set(answer.timing_ms) == {"decode", "detect", "queue", "infer", "total"}


def test_raw_pixels_are_analysed_like_the_decoded_image(stub, astronaut_rgb, reference) -> None:
    answer = stub.AnalyzeImage(image_request(raw(astronaut_rgb), threshold=0.25), metadata=KEYED, timeout=30)
    assert_faces_match(answer.faces, reference(astronaut_rgb, threshold=0.25))
    assert (answer.threshold, answer.threshold_source) == (0.25, "request")


def test_an_operating_point_is_chosen_by_target_fpr(stub, astronaut_jpeg, reference) -> None:
    answer = stub.AnalyzeImage(image_request(astronaut_jpeg, target_fpr=0.01), metadata=KEYED, timeout=30)
    assert (answer.threshold, answer.threshold_source) == (0.8, "fpr_1pct")
    assert_faces_match(answer.faces, reference(decode_image(astronaut_jpeg), threshold=0.8))


def test_a_face_free_image_has_no_faces(stub) -> None:
    answer = stub.AnalyzeImage(image_request(encode(skdata.coffee(), "PNG")), metadata=KEYED, timeout=30)
    assert list(answer.faces) == []
    assert answer.verdict == pb.Verdict(reason="no_face") and not answer.verdict.HasField("score")


def test_every_face_of_a_group_photo_is_judged(stub, group_photo_path, reference) -> None:
    photo = group_photo_path.read_bytes()
    answer = stub.AnalyzeImage(image_request(photo, pb.TASK_LIVENESS), metadata=KEYED, timeout=30)
    assert_group_faces([[f.box.x1, f.box.y1, f.box.x2, f.box.y2] for f in answer.faces])
    # Six faces share a batch here and not in the reference: equal up to batched-matmul rounding.
    assert_faces_match(answer.faces, reference(decode_image(photo), LIVENESS), tolerance=1e-5)
    assert answer.verdict.score == max(face.score for face in answer.faces)


def test_models_are_listed_with_their_manifests_and_engines_as_over_rest(server, stub) -> None:
    listing = stub.ListModels(pb.ListModelsRequest(), metadata=KEYED)
    entries = {f"{e.model.name}:{e.model.version}": e for e in listing.models}
    assert set(entries) == {DEEPFAKE, LIVENESS}
    assert all(e.default_for_task for e in entries.values())
    assert entries[DEEPFAKE].model.demo and entries[DEEPFAKE].default_threshold == 0.4
    assert '"fpr_1pct"' in entries[DEEPFAKE].manifest_json
    rest = httpx.get(server.rest_url + "/v1/models", headers={"x-api-key": API_KEY}).json()["models"]
    engines = {entry["ref"]: entry["engine"] for entry in rest}
    for ref, entry in entries.items():
        chosen = entry.engine
        assert {"engine": chosen.engine, "precision": chosen.precision, "file": chosen.file} == engines[ref]


# ---- a video ------------------------------------------------------------------------------------


def test_a_video_gets_the_same_frames_scores_and_verdict_as_over_rest(server, stub, astronaut_rgb) -> None:
    coffee = np.asarray(Image.fromarray(skdata.coffee()).resize(astronaut_rgb.shape[1::-1]))
    faces = [np.clip(astronaut_rgb * (0.6 + 0.1 * k), 0, 255).astype(np.uint8) for k in range(3)]
    video = make_video(faces + [coffee] * 2, "mp4", "mpeg4")
    answer = stub.AnalyzeVideo(
        pb.AnalyzeVideoRequest(video=video, options=options(), max_frames=4), metadata=KEYED, timeout=60
    )
    rest = httpx.post(
        server.rest_url + "/v1/deepfake",
        files={"file": ("clip", video)},
        data={"max_frames": "4"},
        headers={"x-api-key": API_KEY},
        timeout=60,
    )
    assert rest.status_code == 200, rest.text
    body = rest.json()
    assert body["media"] == "video" and len(answer.frames) == len(body["frames"]) == 4
    assert answer.model == pb.ModelInfo(
        name="tiny-deepfake", version=1, task=pb.TASK_DEEPFAKE, demo=True, notice=DEMO_NOTICE
    )
    for frame, expected in zip(answer.frames, body["frames"], strict=True):
        assert (frame.index, round(frame.time_s, 3)) == (expected["index"], expected["time_s"])
        assert [f.score for f in frame.faces] == pytest.approx([f["score"] for f in expected["faces"]], abs=1e-5)
    assert 0 < sum(bool(frame.faces) for frame in answer.frames) < len(answer.frames)
    assert answer.verdict.label == body["verdict"]["label"]
    assert answer.verdict.score == pytest.approx(body["verdict"]["score"], abs=1e-5)
    assert set(answer.timing_ms) == {"decode", "detect", "queue", "infer", "total"}


@pytest.mark.parametrize(
    ("media", "fields", "expected_reason"),
    [
        ("jpeg", {}, "unsupported_type"),  # images go to AnalyzeImage
        ("mp4", {"max_frames": 1000}, "invalid_parameter"),
        ("mp4", {"fps": 500.0}, "invalid_parameter"),
    ],
)
def test_bad_video_requests_get_a_clear_status(stub, astronaut_rgb, media, fields, expected_reason) -> None:
    data = encode(astronaut_rgb) if media == "jpeg" else make_video([astronaut_rgb] * 2, "mp4", "mpeg4")
    request = pb.AnalyzeVideoRequest(video=data, options=options(), **fields)
    error = status_of(lambda: stub.AnalyzeVideo(request, metadata=KEYED, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason(error) == expected_reason


# ---- the stream ---------------------------------------------------------------------------------


def window_aggregate(window: Iterable[list[float]]) -> tuple[int, float | None, float | None, float | None]:
    """Independently of the server: (judged faces, mean, max, verdict score) of a window given as
    each analysed frame's face scores, of one person (one track): the verdict is the track's peak in
    the window, the highest mean of 3 consecutive faces' scores (the mean of all below 3)."""
    frames = [scores for scores in window if scores]
    flat = [s for scores in frames for s in scores]
    if not flat:
        return 0, None, None, None
    worst = [max(scores) for scores in frames]
    peak = max(np.mean(worst[i : i + 3]) for i in range(max(1, len(worst) - 2)))
    return len(flat), float(np.mean(flat)), max(flat), float(peak)


def test_a_stream_of_100_frames_gets_100_results_in_order_with_a_running_aggregate(
    stub, astronaut_rgb, reference
) -> None:
    coffee = np.asarray(Image.fromarray(skdata.coffee()).resize(astronaut_rgb.shape[1::-1]))
    pictures = [np.clip(astronaut_rgb * (0.6 + 0.1 * k), 0, 255).astype(np.uint8) for k in range(4)] + [coffee]
    encoded = [encode(picture) for picture in pictures]
    expected = [reference(decode_image(e)) for e in encoded]
    broken = 50  # this frame is not an image: it gets an error, the stream goes on
    plan = [i % len(pictures) for i in range(100)]

    def frames() -> Iterator[pb.Frame]:
        for i, picture in enumerate(plan):
            image = pb.Image(encoded=b"not an image" if i == broken else encoded[picture])
            yield pb.Frame(image=image, options=options() if i in (0, 7) else None, index=1000 + i, time_s=i / 25)

    results = list(stub.Analyze(frames(), metadata=KEYED, timeout=120))

    assert [(r.sequence, r.index, r.time_s) for r in results] == [(i, 1000 + i, i / 25) for i in range(100)]
    window: deque[list[float]] = deque(maxlen=30)
    faces_seen = 0
    for i, result in enumerate(results):
        aggregate = result.aggregate
        if i == broken:
            assert result.error == pb.Error(
                code="INVALID_ARGUMENT", reason="unsupported_type", message="not a JPEG, PNG or WebP image"
            )
        else:
            assert_faces_match(result.analysis.faces, expected[plan[i]], tolerance=1e-5)
            assert [face.track_id for face in result.analysis.faces] == [1] * len(result.analysis.faces)
            scores = [face.score for face in result.analysis.faces]
            window.append(scores)
            faces_seen += len(scores)
        judged, mean, worst, verdict = window_aggregate(window)
        assert (aggregate.frames_seen, aggregate.frames_failed) == (i + 1, int(i >= broken))
        assert (aggregate.faces_seen, aggregate.window_frames) == (faces_seen, len(window))
        assert aggregate.window_faces == judged
        assert aggregate.mean_score == pytest.approx(mean, abs=1e-9)
        assert aggregate.max_score == pytest.approx(worst, abs=1e-9)
        assert aggregate.verdict.score == pytest.approx(verdict, abs=1e-9)
        assert aggregate.verdict.label == ("fake" if verdict >= 0.4 else "real")
        assert aggregate.verdict.track_id == 1 and [track.track_id for track in result.tracks] == [1]


def test_a_slow_reader_slows_only_its_own_stream(server, stub) -> None:
    """A client that does not read: its stream stops being analysed after a few frames (the server
    waits to write), while another stream on the server is answered at once; then the slow client
    reads everything, in order."""
    tiny = pb.Image(raw=pb.RawImage(width=16, height=16, rgb=bytes(16 * 16 * 3)))
    sent = 400
    # A small receive window on the slow client, so that HTTP/2 flow control bites after a few results.
    slow_options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]

    def analysed() -> float:
        return gauge(server, "fsfm_request_success_total", model=LIVENESS, transport="grpc")

    before = analysed()
    with grpc.insecure_channel(server.grpc_target, options=slow_options) as channel:
        frames = (pb.Frame(image=tiny, options=options(pb.TASK_LIVENESS), index=i) for i in range(sent))
        slow = pb_grpc.FaceSecurityStub(channel).Analyze(frames, metadata=KEYED, timeout=120)
        stalled = _settled(analysed) - before
        assert 0 < stalled < 50, stalled

        started = time.monotonic()
        other = list(
            stub.Analyze(
                (pb.Frame(image=tiny, options=options(), index=i) for i in range(20)), metadata=KEYED, timeout=30
            )
        )
        assert [r.index for r in other] == list(range(20)) and time.monotonic() - started < 10
        assert analysed() - before == stalled  # the slow stream did not move meanwhile

        assert [r.index for r in slow] == list(range(sent))
    assert analysed() - before == sent


def _settled(read: Callable[[], float], quiet_s: float = 1.0) -> float:
    """``read()`` once it has stopped changing for ``quiet_s``."""
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


# ---- bad inputs: each refused clearly, and the server keeps serving ------------------------------


INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
UNARY_FAILURES: dict[str, tuple[Callable[[bytes], pb.AnalyzeImageRequest], grpc.StatusCode, str | None]] = {
    "zero bytes": (lambda jpeg: image_request(b""), INVALID, "empty"),
    "text": (lambda jpeg: image_request(b"this is not an image"), INVALID, "unsupported_type"),
    "truncated jpeg": (lambda jpeg: image_request(jpeg[: len(jpeg) // 2]), INVALID, "corrupt"),
    "huge message": (lambda jpeg: image_request(jpeg + bytes(MAX_MESSAGE)), EXHAUSTED, None),  # refused by gRPC
    "no image": (lambda jpeg: pb.AnalyzeImageRequest(options=options()), INVALID, "missing_image"),
    "no task": (lambda jpeg: pb.AnalyzeImageRequest(image=pb.Image(encoded=jpeg)), INVALID, "missing_task"),
    "unknown model": (lambda jpeg: image_request(jpeg, model="no-such-model"), NOT_FOUND, "model_not_found"),
    "unknown version": (lambda jpeg: image_request(jpeg, model="tiny-deepfake:9"), NOT_FOUND, "model_not_found"),
    "task without a model": (lambda jpeg: image_request(jpeg, pb.TASK_DIFFUSION), NOT_FOUND, "model_not_found"),
    "model of another task": (
        lambda jpeg: image_request(jpeg, pb.TASK_LIVENESS, model="tiny-deepfake"),
        INVALID,
        "wrong_task",
    ),
    "threshold out of range": (lambda jpeg: image_request(jpeg, threshold=1.5), INVALID, "bad_threshold"),
    "uncalibrated target_fpr": (lambda jpeg: image_request(jpeg, target_fpr=0.05), INVALID, "unknown_operating_point"),
    "raw pixels of the wrong length": (
        lambda jpeg: image_request(pb.RawImage(width=64, height=64, rgb=bytes(4096))),
        INVALID,
        "bad_raw_image",
    ),
    "raw pixels without a size": (lambda jpeg: image_request(pb.RawImage(rgb=bytes(12))), INVALID, "bad_raw_image"),
    "raw pixels over the side limit": (
        lambda jpeg: image_request(pb.RawImage(width=20_000, height=1)),
        INVALID,
        "too_large",
    ),
}


@pytest.mark.parametrize("case", list(UNARY_FAILURES))
def test_bad_image_requests_get_a_clear_status_and_the_server_keeps_serving(server, stub, astronaut_jpeg, case) -> None:
    build, code, expected_reason = UNARY_FAILURES[case]
    error = status_of(lambda: stub.AnalyzeImage(build(astronaut_jpeg), metadata=KEYED, timeout=30))
    assert error.code() == code and error.details(), error
    assert reason(error) == expected_reason
    if expected_reason is not None:
        failures = gauge(server, "fsfm_request_failure_total", transport="grpc", reason=expected_reason)
        assert failures >= 1
    assert_still_serving(stub, astronaut_jpeg)


def frame(data: bytes, **fields: object) -> pb.Frame:
    return pb.Frame(image=pb.Image(encoded=data), **fields)


STREAM_FAILURES: dict[str, tuple[Callable[[bytes], list[pb.Frame]], grpc.StatusCode, str | None, int]] = {
    # (frames, status, reason, results before the status)
    "unknown model": (lambda jpeg: [frame(jpeg, options=options(model="nope"))] * 3, NOT_FOUND, "model_not_found", 0),
    "no options": (lambda jpeg: [frame(jpeg)], INVALID, "missing_task", 0),
    "options changed": (
        lambda jpeg: [frame(jpeg, options=options()), frame(jpeg, options=options(threshold=0.2))],
        INVALID,
        "options_changed",
        1,
    ),
    "huge frame": (lambda jpeg: [frame(jpeg, options=options()), frame(bytes(MAX_MESSAGE + 1))], EXHAUSTED, None, 1),
}


@pytest.mark.parametrize("case", list(STREAM_FAILURES))
def test_stream_ending_errors_get_a_clear_status_and_the_server_keeps_serving(stub, astronaut_jpeg, case) -> None:
    build, code, expected_reason, answered = STREAM_FAILURES[case]
    results: list[pb.FrameResult] = []
    error = status_of(lambda: results.extend(stub.Analyze(iter(build(astronaut_jpeg)), metadata=KEYED, timeout=30)))
    assert error.code() == code and error.details(), error
    assert reason(error) == expected_reason
    assert len(results) <= answered  # the huge frame may end the call before the first result is read
    frames = [frame(astronaut_jpeg, options=options())] * 2
    assert [len(r.analysis.faces) for r in stub.Analyze(iter(frames), metadata=KEYED, timeout=30)] == [1, 1]


def test_frames_without_usable_pixels_fail_alone(stub, astronaut_rgb, astronaut_jpeg) -> None:
    frames = [
        pb.Frame(image=pb.Image(raw=raw(astronaut_rgb)), options=options()),
        pb.Frame(image=pb.Image(raw=pb.RawImage(width=10, height=10, rgb=bytes(7)))),
        pb.Frame(),
        frame(astronaut_jpeg[:-4000]),
        frame(astronaut_jpeg),
    ]
    results = list(stub.Analyze(iter(frames), metadata=KEYED, timeout=30))
    assert [r.WhichOneof("outcome") for r in results] == ["analysis", "error", "error", "error", "analysis"]
    assert [r.error.reason for r in results[1:4]] == ["bad_raw_image", "missing_image", "corrupt"]
    assert results[-1].aggregate.frames_failed == 3 and results[-1].aggregate.faces_seen == 2


# ---- queue, cancellation, deadlines, overload ------------------------------------------------------


def pending(server: RunningServer) -> float:
    return gauge(server, "fsfm_pending_requests")


def test_cancelling_a_stream_frees_its_queued_work_and_a_full_queue_refuses_more(
    slow_server, slow_stub, group_photo_path
) -> None:
    group = group_photo_path.read_bytes()  # six faces
    release = threading.Event()

    def two_group_frames_then_wait() -> Iterator[pb.Frame]:
        yield frame(group, options=options())
        yield frame(group)
        release.wait(60)

    stream = slow_stub.Analyze(two_group_frames_then_wait(), timeout=60)
    try:
        wait_for(lambda: pending(slow_server) == 12)
        assert gauge(slow_server, "fsfm_grpc_active_streams") == 1
        # 12 of 16 queued: six more faces do not fit.
        error = status_of(lambda: slow_stub.AnalyzeImage(image_request(group), timeout=30))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason(error) == "overloaded"
        assert int(dict(error.trailing_metadata())[RETRY_AFTER_KEY]) >= 1
        # In a stream, overload is the frame's own error: the stream goes on.
        (result,) = slow_stub.Analyze(iter([frame(group, options=options())]), timeout=30)
        assert (result.error.code, result.error.reason) == ("RESOURCE_EXHAUSTED", "overloaded")
        assert result.aggregate.frames_failed == 1
    finally:
        stream.cancel()
        release.set()
    wait_for(lambda: pending(slow_server) == 0, timeout_s=5)  # long before the batch's 60 s delay
    wait_for(lambda: gauge(slow_server, "fsfm_grpc_active_streams") == 0, timeout_s=5)
    assert list(slow_stub.AnalyzeImage(image_request(encode(skdata.coffee())), timeout=30).faces) == []


@pytest.mark.parametrize("streaming", [False, True])
def test_a_client_deadline_ends_the_call_and_frees_its_queued_work(
    slow_server, slow_stub, astronaut_jpeg, streaming
) -> None:
    def call() -> object:
        if streaming:
            return list(slow_stub.Analyze(iter([frame(astronaut_jpeg, options=options())]), timeout=1.5))
        return slow_stub.AnalyzeImage(image_request(astronaut_jpeg), timeout=1.5)

    started = time.monotonic()
    error = status_of(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    wait_for(lambda: pending(slow_server) == 0, timeout_s=5)


# ---- health, reflection, API keys --------------------------------------------------------------------


def test_health_is_serving_and_open_without_a_key(server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_and_describes_the_service(server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE_NAME)
        assert {m.name for m in service.methods} == {"Analyze", "AnalyzeImage", "AnalyzeVideo", "ListModels"}
        assert service.file.name == "fsfm/v1/analysis.proto"
        assert "aggregate" in pool.FindMessageTypeByName("fsfm.v1.FrameResult").fields_by_name


@pytest.mark.parametrize(
    ("metadata", "expected_reason"),
    [
        ((), "missing_api_key"),
        ((("x-api-key", API_KEY + "x"),), "invalid_api_key"),
    ],
)
def test_an_api_key_is_required(stub, astronaut_jpeg, metadata, expected_reason) -> None:
    calls = [
        lambda: stub.AnalyzeImage(image_request(astronaut_jpeg), metadata=metadata, timeout=10),
        lambda: list(stub.Analyze(iter([frame(astronaut_jpeg, options=options())]), metadata=metadata, timeout=10)),
        lambda: stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=10),
    ]
    for call in calls:
        error = status_of(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and reason(error) == expected_reason
    assert_still_serving(stub, astronaut_jpeg)


# ---- the aggregate, unit -------------------------------------------------------------------------


def _report(manifest, threshold: float, faces: list[tuple[float, float | None]]) -> tuple[FrameReport, object, float]:
    """A frame with faces at these x positions (100 px boxes on one row: one person per place) with
    these scores (None: a face too small to judge), its model and threshold."""
    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    results = []
    for x, score in faces:
        face = DetectedFace(np.array([x, 0, x + 100, 100], np.float32), landmarks + [x, 0], 0.99)
        results.append(
            FaceResult(face, score, "x", threshold) if score is not None else FaceResult(face, skip_reason="too_small")
        )
    return FrameReport(0, 0.0, results), manifest, threshold


def test_the_stream_aggregate_covers_a_window_of_analysed_frames(models) -> None:
    manifest = ModelRepository(models).get(DEEPFAKE).manifest
    aggregate = StreamAggregate(window=3)
    assert aggregate_message(aggregate.snapshot()).verdict == pb.Verdict(reason="no_face")
    aggregate.add(*_report(manifest, 0.5, []))
    assert aggregate_message(aggregate.snapshot()).verdict == pb.Verdict(reason="no_face")
    aggregate.add(*_report(manifest, 0.5, [(0, None)]))
    assert aggregate_message(aggregate.snapshot()).verdict == pb.Verdict(reason="no_judged_face")
    aggregate.add(*_report(manifest, 0.5, [(0, 0.2), (300, 0.9)]))  # two people: tracks 1 and 2
    aggregate.add_failure()
    aggregate.add(*_report(manifest, 0.5, [(10, 0.1)]))  # the empty frame leaves the window
    snapshot = aggregate.snapshot()
    message = aggregate_message(snapshot)
    assert (message.frames_seen, message.frames_failed, message.faces_seen) == (5, 1, 4)
    assert (message.window_frames, message.window_faces) == (3, 3)
    assert message.mean_score == pytest.approx(0.4) and message.max_score == pytest.approx(0.9)
    # The most suspicious track over the window, not the mean over everyone: track 2 (0.9), not 0.4.
    assert (message.verdict.score, message.verdict.label, message.verdict.track_id) == (pytest.approx(0.9), "fake", 2)
    assert [(t.track_id, t.frame_count, t.score) for t in snapshot.tracks] == [
        (1, 2, pytest.approx(0.15)),
        (2, 1, pytest.approx(0.9)),
    ]
    for _ in range(3):
        aggregate.add(*_report(manifest, 0.5, [(10, 0.3)]))
    message = aggregate_message(aggregate.snapshot())
    assert (message.window_faces, message.mean_score) == (3, pytest.approx(0.3))
    assert (message.verdict.label, message.verdict.track_id) == ("real", 1)


# ---- TLS and the health lifecycle, in-process ------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_and_health_follow_the_core_from_loading_to_draining(models, mtcnn_dir, tmp_path, astronaut_jpeg) -> None:
    cert, key = _self_signed(tmp_path)
    settings = Settings(models=models, grpc_port=0, grpc_tls_cert=cert, grpc_tls_key=key)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

    async def scenario() -> None:
        core = AnalysisCore(settings)
        server, port = await start_grpc_server(core, settings)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)).status

            assert await status() == not_serving  # models not loaded yet
            error = await _aio_status(pb_grpc.FaceSecurityStub(channel).AnalyzeImage(image_request(astronaut_jpeg)))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            await core.start()
            await _eventually(status, serving)
            (face,) = (await pb_grpc.FaceSecurityStub(channel).AnalyzeImage(image_request(astronaut_jpeg))).faces
            assert face.judged
            assert await core.drain(1.0)
            await _eventually(status, not_serving)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:  # TLS only
            plain_health = health_pb2_grpc.HealthStub(plaintext)
            error = await _aio_status(plain_health.Check(health_pb2.HealthCheckRequest(), timeout=3))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        await server.stop(1)
        await core.stop()

    asyncio.run(scenario())


async def _aio_status(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _eventually(read, expected, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (value := await read()) != expected:
        assert time.monotonic() < deadline, value
        await asyncio.sleep(0.05)


# ---- the build and the docs ------------------------------------------------------------------------


def test_the_docs_cover_every_rpc_and_message() -> None:
    docs = (REPO_ROOT / "docs" / "grpc.md").read_text()
    service = pb.DESCRIPTOR.services_by_name[SERVICE_NAME.rsplit(".", 1)[1]]
    for name in [*pb.DESCRIPTOR.message_types_by_name, *service.methods_by_name]:
        assert f"`{name}`" in docs, name


def test_reflection_answers_under_v1_as_well_as_v1alpha(server) -> None:
    """grpcurl and current clients ask ``grpc.reflection.v1`` first; its messages are v1alpha's fields
    under another package name, so v1alpha's message classes read and write them on the wire."""
    from grpc_reflection.v1alpha import reflection_pb2

    with grpc.insecure_channel(server.grpc_target) as channel:
        for service in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            call = channel.stream_stream(
                f"/{service}/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            (answer,) = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
            names = {s.name for s in answer.list_services_response.service}
            assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names, service
