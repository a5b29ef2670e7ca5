"""Evidence through a real ``fsfm serve`` on loopback, REST and gRPC, serving a tiny package exported by our
code: present when asked and equal to a local computation (the same crop and ONNX file, no service), absent
and free when not asked, capped per request; through the local batcher and through the Redis queue to a
worker. The main server runs in ``writes_nothing``: when it stops, the run fails if it wrote any file under
its cwd or temp dir (evidence PNGs are encoded in memory)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import cv2
import grpc
import httpx
import numpy as np
import pytest

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.evidence import (
    EVIDENCE_KINDS,
    FACE_EVIDENCE_KINDS,
    OCCLUSION_CELLS_PER_SIDE,
    PROBES,
    crop_square,
    evidence_inputs,
    inferences_per_face,
)
from fsfm.face.detector import create_detector
from fsfm.imaging import decode_image
from fsfm.package import ModelRepository
from fsfm.scoring import attack_scores
from service.grpc_server import REASON_KEY
from service.grpc_stubs import pb, pb_grpc
from service.rest.schemas import AnalysisResponse
from tests.packages import TINY_VIT
from tests.queue_processes import running_redis, running_worker
from tests.servers import RunningServer, metric, running_server, scrape, writes_nothing

MODEL = "tiny-deepfake:1"
MAX_EVIDENCE_FACES = 2  # the server's cap, below the group photo's six faces


@pytest.fixture(scope="module")
def server(models, mtcnn_dir, tmp_path_factory) -> Iterator[RunningServer]:
    settings = {"max_evidence_faces": MAX_EVIDENCE_FACES, "max_batch_size": 16}
    with (
        writes_nothing(tmp_path_factory.mktemp("evidence-server")) as (cwd, env),
        running_server(models, settings, env=env, cwd=cwd) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.rest_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server) -> Iterator[pb_grpc.FaceSecurityStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.FaceSecurityStub(channel)


@pytest.fixture(scope="module")
def local(models, mtcnn_dir):
    """``(image) -> [(score, evidence input scores, crop square)]`` per judged face: the server's steps, here."""
    package = ModelRepository(models).get(MODEL)
    manifest, detector, engine = package.manifest, create_detector(), OnnxRuntimeEngine(package.onnx_path)

    def explain(image: np.ndarray) -> list[tuple[float, np.ndarray, list[float]]]:
        from fsfm.analysis import prepare_faces

        faces = []
        for prepared in prepare_faces(image, detector.detect(image), manifest):
            assert prepared.tensor is not None
            inputs = np.concatenate(
                [prepared.tensor[None], evidence_inputs(prepared.tensor, FACE_EVIDENCE_KINDS, manifest.normalization)]
            )
            scores = attack_scores(engine.run(inputs)["logits"], manifest)
            square = crop_square(prepared.face.box, image.shape[1], image.shape[0], manifest.crop)
            faces.append((float(scores[0]), scores[1:], square))
        return faces

    return explain


def post(client: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return client.post("/v1/deepfake", params=params, files={"file": ("upload", data)})


def inferences(server: RunningServer) -> float:
    return metric(scrape(server.rest_url), "fsfm_inference_count_total", model=MODEL)


def test_without_evidence_nothing_is_added_and_nothing_extra_is_inferred(server, client, astronaut_jpeg) -> None:
    before = inferences(server)
    response = post(client, astronaut_jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "audit" not in body and "evidence" not in body["timing_ms"]
    assert [face for face in body["faces"] if "evidence" in face] == []
    assert inferences(server) - before == 1  # the face, nothing more


def test_rest_evidence_matches_the_local_computation_and_costs_its_inferences(
    server, client, astronaut_jpeg, local
) -> None:
    before = inferences(server)
    response = post(client, astronaut_jpeg, evidence=",".join(EVIDENCE_KINDS))
    assert response.status_code == 200, response.text
    assert inferences(server) - before == 1 + inferences_per_face(FACE_EVIDENCE_KINDS)
    body = AnalysisResponse.model_validate(response.json()).model_dump(exclude_none=True)
    ((score, input_scores, square),) = local(decode_image(astronaut_jpeg))
    (face,) = body["faces"]
    assert face["score"] == pytest.approx(score, abs=1e-5)
    heatmap, probes = face["evidence"]["heatmap"], face["evidence"]["robustness"]
    cells = OCCLUSION_CELLS_PER_SIDE**2
    grid = np.array(heatmap["grid"])
    assert heatmap["method"] == "occlusion" and grid.shape == (OCCLUSION_CELLS_PER_SIDE, OCCLUSION_CELLS_PER_SIDE)
    np.testing.assert_allclose(grid.ravel(), np.abs(score - input_scores[:cells]), atol=1e-4)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(heatmap["png"]), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (TINY_VIT.img_size, TINY_VIT.img_size, 3)  # the crop's size
    assert heatmap["box"] == pytest.approx(square, abs=0.2)
    assert list(probes["probes"]) == list(PROBES)
    assert list(probes["probes"].values()) == pytest.approx(input_scores[cells:].tolist(), abs=1e-5)
    assert body["timing_ms"]["evidence"] > 0


def test_the_audit_record_traces_the_decision(server, client, astronaut_jpeg, models) -> None:
    response = client.post(
        "/v1/deepfake", params={"threshold": 0.3}, data={"evidence": "audit"}, files={"file": ("a", astronaut_jpeg)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    audit = body["audit"]
    manifest_file = ModelRepository(models).get(MODEL).path / "manifest.json"
    assert audit["input_sha256"] == hashlib.sha256(astronaut_jpeg).hexdigest()
    assert audit["request_id"] == body["request_id"]
    assert audit["model"] == {
        "name": "tiny-deepfake",
        "version": 1,
        "package_sha256": hashlib.sha256(manifest_file.read_bytes()).hexdigest(),
        "onnx_sha256": json.loads(manifest_file.read_text())["onnx"]["sha256"],
    }
    assert (audit["threshold"], audit["threshold_source"]) == (0.3, "request")
    assert audit["thresholds"]["default"] == 0.5 and audit["engine"]["engine"] == "onnxruntime"
    assert audit["code_version"].startswith("fsfm 0.1.0+") and audit["created_at"].endswith("+00:00")
    assert [face for face in body["faces"] if "evidence" in face] == []  # audit alone costs no inference


def test_a_probe_that_crosses_the_threshold_marks_the_face_fragile(client, astronaut_jpeg) -> None:
    (face,) = post(client, astronaut_jpeg, evidence="robustness").json()["faces"]
    score, probes = face["score"], face["evidence"]["robustness"]["probes"]
    farthest = max(probes.values(), key=lambda p: abs(p - score))
    assert abs(farthest - score) > 1e-5  # JPEG and rescaling move a random tiny ViT's score
    between = (score + farthest) / 2  # the face and that probe fall on either side
    (flipped,) = post(client, astronaut_jpeg, evidence="robustness", threshold=between).json()["faces"]
    assert flipped["evidence"]["robustness"]["fragile"] is True
    (kept,) = post(client, astronaut_jpeg, evidence="robustness", threshold=0.0).json()["faces"]
    assert kept["label"] == "fake" and kept["evidence"]["robustness"]["fragile"] is False


def test_evidence_goes_to_the_most_suspicious_faces_only(client, group_photo_path) -> None:
    response = post(client, group_photo_path.read_bytes(), evidence="robustness")
    assert response.status_code == 200, response.text
    judged = [face for face in response.json()["faces"] if "score" in face]
    assert len(judged) > MAX_EVIDENCE_FACES
    explained = [face["score"] for face in judged if "evidence" in face]
    assert sorted(explained, reverse=True) == sorted((f["score"] for f in judged), reverse=True)[:MAX_EVIDENCE_FACES]


def test_a_video_gets_evidence_on_its_most_suspicious_faces_and_one_audit(client, astronaut_rgb) -> None:
    from tests.test_rest import make_video

    frames = [np.clip(astronaut_rgb * (0.5 + 0.1 * k), 0, 255).astype(np.uint8) for k in range(4)]
    video = make_video(frames, "mp4", "mpeg4")
    response = post(client, video, evidence="robustness,audit")
    assert response.status_code == 200, response.text
    body = response.json()
    judged = [face for frame in body["frames"] for face in frame["faces"] if "score" in face]
    assert len(judged) == len(frames) > MAX_EVIDENCE_FACES
    explained = [face["score"] for face in judged if "evidence" in face]
    assert sorted(explained, reverse=True) == sorted((f["score"] for f in judged), reverse=True)[:MAX_EVIDENCE_FACES]
    assert body["audit"]["input_sha256"] == hashlib.sha256(video).hexdigest()


def test_an_unknown_evidence_kind_is_refused_with_its_reason(client, astronaut_jpeg) -> None:
    response = post(client, astronaut_jpeg, evidence="heatmap,saliency")
    assert response.status_code == 400
    assert response.json()["error"]["reason"] == "unknown_evidence"
    assert "saliency" in response.json()["error"]["message"]


def test_grpc_evidence_is_present_when_asked_and_absent_when_not(stub, astronaut_jpeg, astronaut_rgb) -> None:
    options = pb.AnalysisOptions(task=pb.TASK_DEEPFAKE, evidence=list(EVIDENCE_KINDS))
    answer = stub.AnalyzeImage(pb.AnalyzeImageRequest(image=pb.Image(encoded=astronaut_jpeg), options=options))
    (face,) = answer.faces
    heatmap = face.evidence.heatmap
    assert (heatmap.method, heatmap.rows, heatmap.cols) == (
        "occlusion",
        OCCLUSION_CELLS_PER_SIDE,
        OCCLUSION_CELLS_PER_SIDE,
    )
    assert len(heatmap.grid) == OCCLUSION_CELLS_PER_SIDE**2 and all(0 <= v <= 1 for v in heatmap.grid)
    png = cv2.imdecode(np.frombuffer(heatmap.png, np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (TINY_VIT.img_size, TINY_VIT.img_size, 3)
    assert set(face.evidence.robustness.probes) == set(PROBES)
    assert answer.audit.input_sha256 == hashlib.sha256(astronaut_jpeg).hexdigest()
    assert answer.audit.model.name == "tiny-deepfake" and answer.audit.engine.engine == "onnxruntime"
    assert json.loads(answer.audit.thresholds_json)["default"] == 0.5

    raw = pb.RawImage(width=astronaut_rgb.shape[1], height=astronaut_rgb.shape[0], rgb=astronaut_rgb.tobytes())
    audited = stub.AnalyzeImage(
        pb.AnalyzeImageRequest(
            image=pb.Image(raw=raw), options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE, evidence=["audit"])
        )
    )
    assert audited.audit.input_sha256 == hashlib.sha256(astronaut_rgb.tobytes()).hexdigest()
    assert not audited.faces[0].HasField("evidence")

    plain = stub.AnalyzeImage(
        pb.AnalyzeImageRequest(
            image=pb.Image(encoded=astronaut_jpeg), options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE)
        )
    )
    assert not plain.HasField("audit") and not plain.faces[0].HasField("evidence")
    assert "evidence" not in plain.timing_ms


def test_grpc_refuses_an_unknown_evidence_kind(stub, astronaut_jpeg) -> None:
    options = pb.AnalysisOptions(task=pb.TASK_DEEPFAKE, evidence=["heatmap", "saliency"])
    with pytest.raises(grpc.RpcError) as caught:
        stub.AnalyzeImage(pb.AnalyzeImageRequest(image=pb.Image(encoded=astronaut_jpeg), options=options))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())[REASON_KEY] == "unknown_evidence"


def test_evidence_travels_through_the_redis_queue_to_a_worker(
    models, mtcnn_dir, tmp_path, astronaut_jpeg, local
) -> None:
    """An API node with a Redis queue: the occluded copies and probes are inferred by an ``fsfm worker``."""
    with (
        running_redis(tmp_path) as redis_server,
        running_worker(models, redis_server.url, "evidence-worker", {"engine_threads": 1}),
        running_server(models, {"queue": redis_server.url}, grpc=False) as api,
    ):
        response = httpx.post(
            api.rest_url + "/v1/deepfake",
            params={"evidence": "heatmap,robustness,audit"},
            files={"file": ("a", astronaut_jpeg)},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    ((score, input_scores, _),) = local(decode_image(astronaut_jpeg))
    (face,) = body["faces"]
    cells = OCCLUSION_CELLS_PER_SIDE**2
    np.testing.assert_allclose(
        np.ravel(face["evidence"]["heatmap"]["grid"]), np.abs(score - input_scores[:cells]), atol=1e-4
    )
    assert list(face["evidence"]["robustness"]["probes"].values()) == pytest.approx(
        input_scores[cells:].tolist(), abs=1e-5
    )
    assert body["audit"]["engine"] is None  # the workers run the engines
    assert body["audit"]["input_sha256"] == hashlib.sha256(astronaut_jpeg).hexdigest()
