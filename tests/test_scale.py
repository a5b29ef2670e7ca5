"""The scaled-out service as real processes: one ``fsfm serve`` API node with ``FSFM_QUEUE`` pointing
at a ``redis-server`` of this module's own, and ``fsfm worker`` processes. Every answer is checked
against what the local pipeline (detector, crop, ONNX Runtime) computes for the same image."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import DetectorConfig, create_detector
from fsfm.imaging import decode_image
from fsfm.package import ModelPackage
from service.errors import InferenceFailed
from service.metrics import Metrics
from service.redis_queue import GROUP, RedisInferenceClient, connect, dead_letter_stream, work_stream
from service.settings import Settings
from tests.packages import make_tiny_package
from tests.queue_processes import RedisServer, RunningWorker, running_redis, running_worker
from tests.references import analyze_locally
from tests.servers import RunningServer, metric, running_server, scrape

MIN_FACE_SIZE = 40  # small test images, a quick detector: the API node's CPU is not what is tested
CLAIM_TIMEOUT_S = 1.0
MAX_DELIVERIES = 3
WORKER_SETTINGS = {
    "claim_timeout_s": CLAIM_TIMEOUT_S,
    "max_deliveries": MAX_DELIVERIES,
    "engine_threads": 1,
    "max_batch_size": 8,
    "max_queue_delay_ms": 2,
}
SLACK_S = 15.0  # two busy cores shared with other test runs
REQUESTS = 500
KILL_AFTER = 150  # answered requests before a worker is killed


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> ModelPackage:
    return make_tiny_package(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models(package: ModelPackage) -> Path:
    return package.path.parents[1]


@pytest.fixture(scope="module")
def worker_b(models, redis_server) -> RunningWorker:
    with running_worker(models, redis_server.url, "worker-b", WORKER_SETTINGS) as worker:
        yield worker


@pytest.fixture(scope="module")
def api(models, redis_server, worker_b, mtcnn_dir) -> RunningServer:
    settings = {
        "queue": redis_server.url,
        "min_face_size": MIN_FACE_SIZE,
        "request_timeout_s": CLAIM_TIMEOUT_S + SLACK_S,
    }
    with running_server(models, settings, grpc=False) as server:
        yield server


@pytest.fixture(scope="module")
def images(astronaut_rgb, package) -> list[tuple[bytes, float]]:
    """16 PNGs of the astronaut's face at different brightness, each with the score the local
    pipeline gives it; the scores are all different, so a mixed-up answer would show."""
    face = np.asarray(Image.fromarray(astronaut_rgb[0:256, 100:356]).resize((160, 160)))
    detector = create_detector(DetectorConfig(min_face_size=MIN_FACE_SIZE))
    engine = OnnxRuntimeEngine(package.onnx_path)
    result = []
    for k in range(16):
        buffer = io.BytesIO()
        Image.fromarray(np.clip(face * (0.55 + 0.03 * k), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        (expected,) = analyze_locally(decode_image(buffer.getvalue()), detector, package.manifest, engine).faces
        result.append((buffer.getvalue(), expected.score))
    assert len({round(score, 4) for _, score in result}) == len(result)
    return result


def post(client: httpx.AsyncClient, data: bytes):
    return client.post("/v1/deepfake", files={"file": ("face.png", data, "image/png")})


def the_score(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    (face,) = response.json()["faces"]
    return face["score"]


async def kill_while_holding_faces(worker: RunningWorker, redis_url: str, stream: str) -> int:
    """Freeze the worker, and SIGKILL it if it holds faces (else let it go on and try again): the
    faces it held can then only be answered by another worker claiming them."""
    r = connect(redis_url)
    try:
        while True:
            os.kill(worker.process.pid, signal.SIGSTOP)
            held = await r.xpending_range(stream, GROUP, "-", "+", 1000, consumername=worker.consumer)
            if held:
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
                return len(held)
            os.kill(worker.process.pid, signal.SIGCONT)
            await asyncio.sleep(0.01)
    finally:
        await r.aclose()


def test_500_requests_survive_a_worker_killed_mid_run(api, worker_b, models, redis_server, package, images) -> None:
    stream = work_stream(package.manifest.ref)
    plan = [i % len(images) for i in range(REQUESTS)]

    async def run(worker_a: RunningWorker) -> tuple[list[httpx.Response], list[float], int]:
        answered = 0
        limit = asyncio.Semaphore(16)
        latencies = [0.0] * REQUESTS

        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            nonlocal answered
            async with limit:
                started = time.monotonic()
                response = await post(client, images[plan[i]][0])
                latencies[i] = time.monotonic() - started
                answered += 1
                return response

        async def killer() -> int:
            while answered < KILL_AFTER:
                await asyncio.sleep(0.01)
            return await kill_while_holding_faces(worker_a, redis_server.url, stream)

        async with httpx.AsyncClient(base_url=api.rest_url, timeout=60) as client:
            *responses, held = await asyncio.gather(*(one(client, i) for i in range(REQUESTS)), killer())
        return responses, latencies, held

    before = scrape(worker_b.http_url)
    with running_worker(models, redis_server.url, "worker-a", WORKER_SETTINGS) as worker_a:
        responses, latencies, held = asyncio.run(run(worker_a))
        assert worker_a.process.returncode == -signal.SIGKILL
    for i, response in enumerate(responses):
        assert the_score(response) == pytest.approx(images[plan[i]][1], abs=1e-5), i
    assert held >= 1
    assert max(latencies) < CLAIM_TIMEOUT_S + SLACK_S
    claimed = metric(scrape(worker_b.http_url), "fsfm_queue_claimed_total") - metric(before, "fsfm_queue_claimed_total")
    assert claimed >= held
    assert metric(scrape(api.rest_url), "fsfm_request_success_total", transport="rest") >= REQUESTS


def test_a_poison_face_is_dead_lettered_and_the_others_succeed(api, worker_b, redis_server, package) -> None:
    """A face the model cannot take (wrong size) fails on every delivery: it ends in the
    dead-letter stream with its error and its request gets that error, while the faces that shared
    its batches are answered. Sent by an API-node client in this process to the real workers."""
    ref = package.manifest.ref
    good = np.random.default_rng(3).standard_normal((4, 3, 64, 64)).astype(np.float32)
    poison = np.zeros((1, 3, 32, 32), np.float32)

    async def scenario() -> None:
        client = RedisInferenceClient(package.manifest, Settings(queue=redis_server.url), Metrics())
        client.start()
        try:
            results = await asyncio.gather(
                client.infer(poison), *(client.infer(g[None]) for g in good), return_exceptions=True
            )
        finally:
            await client.stop()
        failure, *answers = results
        assert isinstance(failure, InferenceFailed) and dead_letter_stream(ref) in failure.message
        expected = OnnxRuntimeEngine(package.onnx_path).run(good)["logits"]
        np.testing.assert_allclose(
            np.concatenate([a.outputs["logits"] for a in answers]), expected, rtol=1e-5, atol=1e-6
        )
        r = connect(redis_server.url)
        letters = await r.xrange(dead_letter_stream(ref))
        await r.aclose()
        ((_, letter),) = letters
        assert letter[b"deliveries"] == str(MAX_DELIVERIES).encode()
        assert b"Got invalid dimensions for input" in letter[b"error"]  # the engine's own error

    asyncio.run(scenario())
    assert metric(scrape(worker_b.http_url), "fsfm_queue_dead_letters_total", model=ref) == 1


async def keep_sending(
    client: httpx.AsyncClient, data: bytes, outcomes: list[tuple[httpx.Response, float]], stop: asyncio.Event
) -> None:
    """Post ``data`` again and again until ``stop``, recording each answer and how long it took."""
    while not stop.is_set():
        started = time.monotonic()
        response = await post(client, data)
        outcomes.append((response, time.monotonic() - started))


def test_redis_outage_gives_fast_503s_and_the_service_recovers(api, worker_b, redis_server, images) -> None:
    """Redis is killed while requests flow: each request is answered correctly or refused with 503
    quickly, none hangs, and /readyz says why; once Redis is back (empty: streams and consumer group
    gone), the API node and the worker serve again without a restart."""
    data, expected = images[0]
    outcomes: list[tuple[httpx.Response, float]] = []

    async def traffic_across_the_outage() -> dict:
        stop = asyncio.Event()

        async with httpx.AsyncClient(base_url=api.rest_url, timeout=60) as client:
            senders = [asyncio.create_task(keep_sending(client, data, outcomes, stop)) for _ in range(8)]
            await asyncio.sleep(1.0)
            redis_server.stop()
            await asyncio.sleep(1.5)
            readiness = await client.get("/readyz")
            stop.set()
            await asyncio.gather(*senders)
        return {"status": readiness.status_code, **readiness.json()}

    try:
        readiness = asyncio.run(traffic_across_the_outage())
        worker_ready = httpx.get(worker_b.http_url + "/readyz")
    finally:
        redis_server.start()
    assert readiness["status"] == 503 and "unreachable" in str(readiness["backend_errors"]), readiness
    assert worker_ready.status_code == 503 and worker_ready.json()["reason"] == "backend_down"
    assert "unreachable" in worker_ready.json()["backend_errors"]["queue"]
    refused = [r for r, _ in outcomes if r.status_code == 503]
    assert refused and all(r.json()["error"]["reason"] == "queue_unreachable" for r in refused)
    for response, seconds in outcomes:
        assert seconds < 2.0, (response.status_code, seconds)  # answered or refused, never left hanging
        if response.status_code != 503:
            assert the_score(response) == pytest.approx(expected, abs=1e-5)
    wait_for(lambda: httpx.get(api.rest_url + "/readyz").status_code == 200, "the API did not recover")
    wait_for(lambda: httpx.get(worker_b.http_url + "/readyz").status_code == 200, "the worker did not recover")
    response = httpx.post(api.rest_url + "/v1/deepfake", files={"file": ("f.png", data)}, timeout=30)
    assert the_score(response) == pytest.approx(expected, abs=1e-5)


def test_a_frozen_redis_gives_503_and_not_ready_within_a_second_and_recovers(
    api, worker_b, redis_server, images
) -> None:
    """Redis is frozen (SIGSTOP: connections are accepted, nothing answers) while requests flow: every
    request is answered correctly or refused with 503 within a second, /readyz says 503 within a
    second of the freeze, and after SIGCONT the service serves again without a restart."""
    data, expected = images[0]
    outcomes: list[tuple[httpx.Response, float]] = []

    async def traffic_across_the_freeze() -> float:
        stop = asyncio.Event()

        async with httpx.AsyncClient(base_url=api.rest_url, timeout=60) as client:
            senders = [asyncio.create_task(keep_sending(client, data, outcomes, stop)) for _ in range(4)]
            await asyncio.sleep(0.5)
            redis_server.freeze()
            frozen = time.monotonic()
            while (await client.get("/readyz")).status_code == 200 and time.monotonic() - frozen < 5:
                await asyncio.sleep(0.02)
            not_ready_after = time.monotonic() - frozen
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*senders)
        return not_ready_after

    try:
        not_ready_after = asyncio.run(traffic_across_the_freeze())
    finally:
        redis_server.thaw()
    assert not_ready_after < 1.0
    refused = [(r, seconds) for r, seconds in outcomes if r.status_code == 503]
    assert refused and all(r.json()["error"]["reason"] == "queue_unreachable" for r, _ in refused)
    assert max(seconds for _, seconds in refused) < 1.0, sorted(seconds for _, seconds in refused)
    for response, seconds in outcomes:
        assert seconds < 1.5, (response.status_code, seconds)
        if response.status_code != 503:
            assert the_score(response) == pytest.approx(expected, abs=1e-5)
    wait_for(lambda: httpx.get(api.rest_url + "/readyz").status_code == 200, "the API did not recover")
    response = httpx.post(api.rest_url + "/v1/deepfake", files={"file": ("f.png", data)}, timeout=30)
    assert the_score(response) == pytest.approx(expected, abs=1e-5)


def wait_for(condition, message: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
