"""The REST door on a real ``fsfm serve`` process on loopback, serving tiny exported ViTs.

Every answer is checked against an independent computation: the same detector, crop convention
and ONNX file run here through ``tests.references.analyze_locally`` (no batcher, no core).
"""

from __future__ import annotations

import asyncio
import inspect
import io
from collections.abc import Callable
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from fsfm.imaging import ImageLimits, decode_image
from fsfm.package.manifest import OperatingPoint, Thresholds
from service.commands import serve
from service.media import decode_video
from service.metrics import Metrics
from service.rest.schemas import AnalysisResponse, ErrorResponse, ModelsResponse
from service.settings import Settings
from tests.faces import ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS, assert_face_at, assert_group_faces
from tests.packages import make_tiny_package
from tests.references import ImageAnalysis, Reference, encode, make_reference
from tests.servers import REPO_ROOT, RunningServer, metric, running_server, scrape
from tests.test_imaging import png_bomb

API_KEYS = ["key-one", "key-two"]
ORIGIN = "https://console.example"
DEFAULT_DEEPFAKE = "tiny-deepfake:2"  # the highest version is served by default
DEMO_DESCRIPTION = "DEMO: a tiny random ViT, at chance on every face"  # the default deepfake model's
MAX_UPLOAD = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("models")
    make_tiny_package(repo, name="tiny-deepfake", version=1, seed=0)
    make_tiny_package(
        repo,
        name="tiny-deepfake",
        version=2,
        seed=2,
        demo=True,
        description=DEMO_DESCRIPTION,
        thresholds=Thresholds(
            default=0.4, operating_points=[OperatingPoint(name="fpr_1pct", threshold=0.8, target_fpr=0.01)]
        ),
    )
    make_tiny_package(repo, name="tiny-liveness", task="liveness", seed=1)
    return repo


@pytest.fixture(scope="module")
def server(models, mtcnn_dir) -> RunningServer:
    settings = {
        "api_keys": API_KEYS,
        "cors_origins": [ORIGIN],
        "max_upload_bytes": MAX_UPLOAD,
        "max_batch_size": 8,
        "max_queue_delay_ms": 30,
        "max_video_frames": 8,
    }
    with running_server(models, settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    with httpx.Client(base_url=server.rest_url, headers={"x-api-key": API_KEYS[0]}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(models, mtcnn_dir) -> Reference:
    return make_reference(models, DEFAULT_DEEPFAKE)


def upload(client: httpx.Client, path: str, data: bytes, field: str = "file", **params: object) -> httpx.Response:
    return client.post(path, files={field: ("upload.bin", data, "application/octet-stream")}, params=params)


def answer(response: httpx.Response) -> dict:
    """A successful analysis, checked against the documented response schema."""
    assert response.status_code == 200, response.text
    body = response.json()
    AnalysisResponse.model_validate(body)
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def error(response: httpx.Response, status: int, reason: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    ErrorResponse.model_validate(body)
    assert body["error"]["reason"] == reason, body
    assert body["request_id"] == response.headers["x-request-id"]
    return body["error"]


def assert_faces_match(faces: list[dict], expected: ImageAnalysis) -> None:
    """The server's faces are the reference's: same boxes, same scores, labels and thresholds."""
    assert len(faces) == len(expected.faces)
    for face, want in zip(faces, expected.faces, strict=False):
        assert face["box"] == pytest.approx(want.face.box.tolist(), abs=0.06)
        assert face["score"] == pytest.approx(want.score, abs=1e-5)
        assert (face["label"], face["threshold"]) == (want.label, want.threshold)


# ---- results on real photos -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ref", "attack_labels"),
    [
        ("/v1/deepfake", DEFAULT_DEEPFAKE, {"fake", "real"}),
        ("/v1/liveness", "tiny-liveness:1", {"spoof", "live"}),
    ],
)
def test_the_astronaut_gets_her_face_and_score(client, astronaut_jpeg, reference, path, ref, attack_labels) -> None:
    body = answer(upload(client, path, astronaut_jpeg))
    (face,) = body["faces"]
    assert_face_at(face["box"], face["landmarks"], ASTRONAUT_FACE_BOX, ASTRONAUT_LANDMARKS)
    assert face["detection_score"] >= 0.9 and face["label"] in attack_labels
    assert_faces_match(body["faces"], reference(decode_image(astronaut_jpeg), ref))
    name, version = ref.split(":")
    demo = ref == DEFAULT_DEEPFAKE  # a demo model's answers say what it is worth: its description
    assert body["model"] == {"name": name, "version": int(version), "task": path.rsplit("/", 1)[1], "demo": demo} | (
        {"notice": DEMO_DESCRIPTION} if demo else {}
    )
    assert body["media"] == "image"
    assert body["verdict"] == {"label": face["label"], "score": face["score"]}
    assert set(body["timing_ms"]) == {"decode", "detect", "queue", "infer", "total"}


def test_a_face_free_image_has_no_faces(client) -> None:
    body = answer(upload(client, "/v1/deepfake", encode(skdata.coffee(), "PNG")))
    assert body["faces"] == []
    assert body["verdict"] == {"label": None, "score": None, "reason": "no_face"}


def test_every_face_of_a_group_photo_is_judged(client, group_photo_path, reference) -> None:
    photo = group_photo_path.read_bytes()
    body = answer(upload(client, "/v1/liveness", photo, threshold=0.3))
    assert_group_faces([face["box"] for face in body["faces"]])
    assert_faces_match(body["faces"], reference(decode_image(photo), "tiny-liveness:1", threshold=0.3))
    assert body["threshold"] == 0.3 and body["threshold_source"] == "request"
    assert body["verdict"]["score"] == max(face["score"] for face in body["faces"])


@pytest.mark.parametrize(
    ("params", "form", "threshold", "source", "version"),
    [
        ({}, {}, 0.4, "default", 2),
        ({"model": "tiny-deepfake:1"}, {}, 0.5, "default", 1),
        ({}, {"model": "tiny-deepfake:1", "threshold": "0.25"}, 0.25, "request", 1),
        ({"target_fpr": 0.01}, {}, 0.8, "fpr_1pct", 2),
    ],
)
def test_model_and_operating_point_choice(
    client, astronaut_jpeg, reference, params, form, threshold, source, version
) -> None:
    response = client.post("/v1/deepfake", params=params, data=form, files={"file": ("a.jpg", astronaut_jpeg)})
    body = answer(response)
    assert (body["model"]["version"], body["threshold"], body["threshold_source"]) == (version, threshold, source)
    assert_faces_match(body["faces"], reference(decode_image(astronaut_jpeg), f"tiny-deepfake:{version}", threshold))


# ---- batching -------------------------------------------------------------------------------


BATCHED = "tiny-deepfake:1"  # its scores on the variants below are well apart


def test_concurrent_requests_share_batches_and_get_their_own_results(server, astronaut_rgb, reference) -> None:
    variants = [encode(np.clip(astronaut_rgb * (0.55 + 0.03 * k), 0, 255).astype(np.uint8)) for k in range(16)]
    expected = [reference(decode_image(v), BATCHED).faces[0].score for v in variants]
    assert len({round(score, 4) for score in expected}) == len(variants)  # a mix-up would show
    requests = [variants[i % len(variants)] for i in range(64)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.rest_url,
            headers={"x-api-key": API_KEYS[1]},
            timeout=120,
            limits=httpx.Limits(max_connections=64),
        ) as client:
            posts = [client.post("/v1/deepfake", params={"model": BATCHED}, files={"file": data}) for data in requests]
            return await asyncio.gather(*posts)

    before = scrape(server.rest_url)
    responses = asyncio.run(send_all())
    after = scrape(server.rest_url)
    for i, response in enumerate(responses):
        (face,) = answer(response)["faces"]
        assert face["score"] == pytest.approx(expected[i % len(variants)], abs=1e-5), i

    def delta(name: str) -> float:
        return metric(after, name, model=BATCHED) - metric(before, name, model=BATCHED)

    calls = delta("fsfm_batch_execution_count_total")
    assert delta("fsfm_inference_count_total") == 64
    assert 0 < calls < 64  # fewer engine calls than requests: faces shared batches
    assert delta("fsfm_batch_size_count") == calls and delta("fsfm_batch_size_sum") == 64


# ---- video ----------------------------------------------------------------------------------


def make_video(frames: list[np.ndarray], container: str, codec: str, fps: int = 5) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_frames(astronaut_rgb) -> list[np.ndarray]:
    """2 s at 5 fps: the astronaut, brightening, then a face-free picture (same size)."""
    faces = [np.clip(astronaut_rgb * (0.6 + 0.08 * k), 0, 255).astype(np.uint8) for k in range(6)]
    coffee = np.asarray(Image.fromarray(skdata.coffee()).resize(astronaut_rgb.shape[1::-1]))
    return faces + [coffee] * 4


@pytest.mark.parametrize(("container", "codec"), [("mp4", "mpeg4"), ("webm", "libvpx")])
@pytest.mark.parametrize("sampling", [{"max_frames": 4}, {"fps": 2.5}])
def test_a_video_gets_per_frame_results_and_a_video_verdict(
    client, reference, clip_frames, container, codec, sampling
) -> None:
    video = make_video(clip_frames, container, codec)
    body = answer(client.post("/v1/deepfake", data=sampling, files={"file": ("clip", video)}))
    assert body["media"] == "video" and "faces" not in body
    # The frames the server should have sampled, decoded here by the same code.
    expected = list(decode_video(video, ImageLimits(), 60, sampling.get("max_frames", 8), sampling.get("fps")))
    assert [(f["index"], f["time_s"]) for f in body["frames"]] == [(index, t) for index, t, _ in expected]
    worst_per_frame = []
    for frame, (_, _, image) in zip(body["frames"], expected, strict=False):
        want = reference(image)
        assert_faces_match(frame["faces"], want)
        if want.verdict.score is not None:
            worst_per_frame.append(want.verdict.score)
    assert 0 < len(worst_per_frame) < len(expected)  # some frames with the face, some without
    assert body["verdict"]["score"] == pytest.approx(float(np.mean(worst_per_frame)), abs=1e-5)
    assert body["verdict"]["label"] == ("fake" if body["verdict"]["score"] >= 0.4 else "real")


# ---- bad inputs: each refused clearly, and the server keeps serving ---------------------------


def part_head(field: str = "file") -> bytes:
    return f'--xyz\r\nContent-Disposition: form-data; name="{field}"; filename="a"\r\n\r\n'.encode()


def multipart(payload: bytes, field: str = "file") -> bytes:
    return part_head(field) + payload + b"\r\n--xyz--\r\n"


MULTIPART = {"content-type": "multipart/form-data; boundary=xyz"}
HUNDRED_MB = 100 * 1024 * 1024


def streamed_body(total: int):
    """A multipart body of ``total`` bytes sent in chunks, with no Content-Length."""
    yield part_head()
    for _ in range(total // (1024 * 1024)):
        yield bytes(1024 * 1024)
    yield b"\r\n--xyz--\r\n"


def unknown_codec_video(clip_frames: list[np.ndarray]) -> bytes:
    """A valid Matroska file whose video codec FFmpeg does not know."""
    video = make_video(clip_frames[:3], "matroska", "mpeg4")
    assert video.count(b"V_MPEG4/ISO/ASP") == 1
    return video.replace(b"V_MPEG4/ISO/ASP", b"V_FSFM/UNKNOWN!")


Send = Callable[[httpx.Client, dict[str, bytes]], httpx.Response]
GARBAGE_MP4 = b"\0\0\0\x18ftypisom" + bytes(range(256)) * 8  # an MP4 signature, then nonsense


def posting(data: bytes | str = "jpeg", path: str = "/v1/deepfake", field: str = "file", **params: object) -> Send:
    """Upload ``data``: bytes, or the name of one of the ``media`` fixture's files."""
    return lambda client, media: upload(client, path, media[data] if isinstance(data, str) else data, field, **params)


def with_form(fields: dict[str, str], **params: object) -> Send:
    """Upload the astronaut with these form fields (and query parameters)."""
    return lambda client, media: client.post("/v1/deepfake", params=params, data=fields, files={"file": media["jpeg"]})


def raw_body(content: Callable[[dict[str, bytes]], object], headers: dict[str, str] = MULTIPART) -> Send:
    return lambda client, media: client.post("/v1/deepfake", content=content(media), headers=headers)


BAD_REQUESTS: dict[str, tuple[Send, int, str]] = {
    "zero bytes": (posting(b""), 400, "empty"),
    "text": (posting(b"this is not an image"), 415, "unsupported_type"),
    "truncated jpeg": (posting("truncated"), 400, "corrupt"),
    "png bomb": (posting("bomb"), 413, "too_large"),
    "100 MB body": (raw_body(lambda media: multipart(bytes(HUNDRED_MB))), 413, "body_too_large"),
    "100 MB streamed": (raw_body(lambda media: streamed_body(HUNDRED_MB)), 413, "body_too_large"),
    "wrong field": (posting(field="image"), 422, "missing_file"),
    "two files": (lambda c, m: c.post("/v1/deepfake", files=[("file", m["jpeg"])] * 2), 422, "several_files"),
    "not multipart": (raw_body(lambda media: media["jpeg"], {"content-type": "image/jpeg"}), 415, "not_multipart"),
    "truncated multipart": (raw_body(lambda media: multipart(media["jpeg"])[:-20]), 400, "bad_multipart"),
    "unknown video codec": (posting("mkv"), 415, "unsupported_codec"),
    "garbage mp4": (posting(GARBAGE_MP4), 400, "corrupt_video"),
    "unknown model": (posting(model="no-such-model"), 404, "model_not_found"),
    "unknown version": (posting(model="tiny-deepfake:9"), 404, "model_not_found"),
    "model of another task": (posting(path="/v1/liveness", model="tiny-deepfake"), 400, "wrong_task"),
    "task without a model": (posting(path="/v1/diffusion"), 404, "task_not_served"),
    "threshold out of range": (posting(threshold=1.5), 422, "invalid_parameter"),
    "form threshold not a number": (with_form({"threshold": "high"}), 422, "invalid_parameter"),
    "parameter given twice": (with_form({"threshold": "0.3"}, threshold=0.2), 422, "invalid_parameter"),
    "unknown parameter": (posting(colour="red"), 422, "invalid_parameter"),
    "too many frames": (posting(max_frames=1000), 422, "invalid_parameter"),
    "threshold and target_fpr": (posting(threshold=0.2, target_fpr=0.01), 400, "bad_threshold"),
    "uncalibrated target_fpr": (posting(target_fpr=0.05), 400, "unknown_operating_point"),
    "unknown path": (lambda c, m: c.get("/v1/nothing-here"), 404, "not_found"),
    "wrong method": (lambda c, m: c.get("/v1/deepfake"), 405, "method_not_allowed"),
}


@pytest.fixture(scope="module")
def media(astronaut_jpeg, clip_frames) -> dict[str, bytes]:
    return {
        "jpeg": astronaut_jpeg,
        "truncated": astronaut_jpeg[: len(astronaut_jpeg) // 2],
        "bomb": png_bomb(8000),  # 64 Mpx decoded, over the default max_pixels
        "mkv": unknown_codec_video(clip_frames),
    }


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(client, media, case) -> None:
    send, status, reason = BAD_REQUESTS[case]
    details = error(send(client, media), status, reason)
    assert details["message"]
    (face,) = answer(upload(client, "/v1/deepfake", media["jpeg"]))["faces"]
    assert face["score"] is not None


def test_the_wrong_field_error_names_the_right_one(client, astronaut_jpeg) -> None:
    details = error(upload(client, "/v1/deepfake", astronaut_jpeg, field="image"), 422, "missing_file")
    assert "'file'" in details["message"] and "image" in details["message"]


# ---- security -------------------------------------------------------------------------------


def test_api_keys_guard_the_api_but_not_the_probes(server, astronaut_jpeg) -> None:
    with httpx.Client(base_url=server.rest_url, timeout=30) as anonymous:
        error(upload(anonymous, "/v1/deepfake", astronaut_jpeg), 401, "missing_api_key")
        error(anonymous.get("/v1/models"), 401, "missing_api_key")
        anonymous.headers["x-api-key"] = "key-one-but-longer"
        error(upload(anonymous, "/v1/deepfake", astronaut_jpeg), 401, "invalid_api_key")
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anonymous.get(open_path).status_code == 200, open_path
        anonymous.headers["x-api-key"] = API_KEYS[1]
        answer(upload(anonymous, "/v1/deepfake", astronaut_jpeg))


def test_cors_answers_the_configured_origin_only(client) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "x-api-key"}
    allowed = client.options("/v1/deepfake", headers={"origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = client.options("/v1/deepfake", headers={"origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


# ---- models, probes, metrics, OpenAPI -------------------------------------------------------


def test_models_lists_every_package_with_its_manifest(client) -> None:
    listing = ModelsResponse.model_validate(client.get("/v1/models").json())
    entries = {entry.ref: entry for entry in listing.models}
    assert set(entries) == {"tiny-deepfake:1", "tiny-deepfake:2", "tiny-liveness:1"}
    assert {ref for ref, e in entries.items() if e.default_for_task} == {"tiny-deepfake:2", "tiny-liveness:1"}
    latest = entries["tiny-deepfake:2"].manifest
    assert latest.demo and latest.thresholds.operating_points[0].name == "fpr_1pct" and latest.crop.size == 64


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["models_loaded"] and not ready["draining"] and ready["queue"] == "local"


def test_metrics_expose_the_documented_names_after_traffic(client, astronaut_jpeg, server) -> None:
    answer(upload(client, "/v1/liveness", astronaut_jpeg))
    error(upload(client, "/v1/liveness", b"GIF89a..."), 415, "unsupported_type")
    samples = scrape(server.rest_url)
    rest_liveness = {"task": "liveness", "transport": "rest"}
    assert metric(samples, "fsfm_request_success_total", model="tiny-liveness:1", **rest_liveness) >= 1
    assert metric(samples, "fsfm_request_failure_total", reason="unsupported_type", **rest_liveness) >= 1
    assert metric(samples, "fsfm_inference_count_total", model="tiny-liveness:1") >= 1
    assert metric(samples, "fsfm_batch_execution_count_total", model="tiny-liveness:1") >= 1
    assert metric(samples, "fsfm_batch_size_bucket", model="tiny-liveness:1", le="+Inf") >= 1
    for stage in ("decode", "detect", "queue", "infer", "total"):
        count = metric(samples, "fsfm_stage_duration_seconds_count", stage=stage, model="tiny-liveness:1")
        total = metric(samples, "fsfm_stage_duration_seconds_sum", stage=stage, model="tiny-liveness:1")
        assert count >= 1 and 0 <= total < 60 * count, stage
    assert metric(samples, "fsfm_faces_per_input_count") >= 2 and metric(samples, "fsfm_faces_per_input_sum") >= 1
    assert metric(samples, "fsfm_pending_requests", model="tiny-liveness:1") == 0
    for ref in ("tiny-deepfake:1", "tiny-deepfake:2", "tiny-liveness:1"):
        assert metric(samples, "fsfm_model_ready", model=ref) == 1


def test_openapi_documents_the_upload_the_answers_and_the_errors(client) -> None:
    spec = client.get("/openapi.json").json()
    documented = {"/v1/deepfake", "/v1/liveness", "/v1/diffusion", "/v1/models", "/healthz", "/readyz", "/metrics"}
    assert documented <= set(spec["paths"])
    operation = spec["paths"]["/v1/deepfake"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and form["properties"]["file"]["format"] == "binary"
    params = {"model", "threshold", "target_fpr", "fps", "max_frames", "evidence"}
    assert params <= set(form["properties"])
    assert {p["name"] for p in operation["parameters"]} == params
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert "notice" in spec["components"]["schemas"]["ModelRef"]["properties"]
    assert ok["$ref"].endswith("/AnalysisResponse")
    assert len(spec["components"]["schemas"]["AnalysisResponse"]["examples"]) == 3  # image, video, with evidence
    for status in ("400", "401", "404", "413", "415", "422", "429", "503", "504"):
        content = operation["responses"][status]["content"]["application/json"]
        assert content["schema"]["$ref"].endswith("/ErrorResponse") and content["example"]["error"]["reason"], status
    assert "Retry-After" in operation["responses"]["429"]["headers"]
    assert operation["security"] == [{"APIKeyHeader": []}]
    for example in spec["components"]["schemas"]["AnalysisResponse"]["examples"]:
        AnalysisResponse.model_validate(example)


def test_docs_and_flags_cover_every_setting_and_metric() -> None:
    docs = (REPO_ROOT / "docs" / "api.md").read_text()
    for name in Settings.model_fields:
        assert f"`FSFM_{name.upper()}`" in docs, name
    for family in Metrics().registry.collect():
        exposed = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{exposed}`" in docs, exposed
    flags = set(inspect.signature(serve).parameters) - {"grpc", "log_level"}
    assert flags <= set(Settings.model_fields), flags - set(Settings.model_fields)
