"""The REST door under overload, past deadlines, through a graceful shutdown, and without PyTorch.

Slow batching (a large batch that waits seconds to fill) holds requests in the queue on purpose,
so each behaviour is observed at a known moment rather than raced for.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from service.grpc_server import REASON_KEY
from service.grpc_stubs import pb, pb_grpc
from tests.no_torch import MESSAGE, torchless_env
from tests.servers import metric, running_server, scrape
from tests.test_rest import answer, error, upload

QUEUE_DELAY_S = 3.0
SLOW_BATCHES = {"max_batch_size": 64, "max_queue_delay_ms": QUEUE_DELAY_S * 1000}
MODEL = "tiny-deepfake:1"


def wait_for_queued(rest_url: str, faces: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(scrape(rest_url), "fsfm_pending_requests", model=MODEL) != faces:
        assert time.monotonic() < deadline, f"never saw {faces} queued faces"
        time.sleep(0.02)


def test_overload_is_refused_at_once_while_admitted_requests_succeed(models, mtcnn_dir, astronaut_jpeg) -> None:
    with running_server(models, {**SLOW_BATCHES, "max_queue_size": 4}) as server:

        async def timed(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await client.post("/v1/deepfake", files={"file": ("a.jpg", astronaut_jpeg)})
            return response, time.monotonic() - started

        async def send_all() -> list[tuple[httpx.Response, float]]:
            async with httpx.AsyncClient(base_url=server.rest_url, timeout=60) as client:
                return await asyncio.gather(*(timed(client) for _ in range(12)))

        results = asyncio.run(send_all())
        admitted = [seconds for response, seconds in results if response.status_code == 200]
        refused = [(response, seconds) for response, seconds in results if response.status_code != 200]
        assert len(admitted) == 4 and len(refused) == 8  # one face each; the queue holds 4
        for response, seconds in refused:
            error(response, 429, "overloaded")
            assert int(response.headers["retry-after"]) >= 1
            assert seconds < min(admitted) and seconds < QUEUE_DELAY_S  # refused at once, not queued
        assert min(admitted) >= QUEUE_DELAY_S * 0.9  # they waited for their batch, then succeeded
        samples = scrape(server.rest_url)
        assert metric(samples, "fsfm_request_failure_total", reason="overloaded", transport="rest") == 8
        assert metric(samples, "fsfm_request_success_total", model=MODEL) == 4


def test_a_request_past_its_deadline_leaves_the_queue(models, mtcnn_dir, astronaut_jpeg) -> None:
    with running_server(models, {**SLOW_BATCHES, "request_timeout_s": 1.0}) as server:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            started = time.monotonic()
            error(upload(client, "/v1/deepfake", astronaut_jpeg), 504, "deadline_exceeded")
            assert time.monotonic() - started < QUEUE_DELAY_S  # answered at its deadline, not at the batch's
            samples = scrape(server.rest_url)
            assert metric(samples, "fsfm_pending_requests", model=MODEL) == 0  # dropped before any batch ran
            assert metric(samples, "fsfm_batch_execution_count_total", model=MODEL) == 0
            assert metric(samples, "fsfm_request_failure_total", reason="deadline_exceeded") == 1


def test_sigterm_drains_in_flight_work_refuses_new_work_and_exits(models, mtcnn_dir, astronaut_jpeg) -> None:
    with running_server(models, SLOW_BATCHES) as server, ThreadPoolExecutor(1) as pool:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            in_flight = pool.submit(upload, client, "/v1/deepfake", astronaut_jpeg)
            wait_for_queued(server.rest_url, 1)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            readiness = client.get("/readyz")
            assert readiness.status_code == 503 and readiness.json()["draining"] is True
            error(upload(client, "/v1/deepfake", astronaut_jpeg), 503, "draining")
            assert not in_flight.done()
            (face,) = answer(in_flight.result(timeout=QUEUE_DELAY_S + 5))["faces"]
            assert face["score"] is not None
        code = server.process.wait(timeout=server.stop_bound_s)
        took = time.monotonic() - signalled
    assert code == 0, server.log()
    assert took < QUEUE_DELAY_S + 3, took  # the in-flight batch, then a prompt exit
    assert "draining" in server.log() and "fsfm stopped" in server.log()


def test_work_still_in_flight_when_the_grace_ends_gets_503_shutting_down(models, mtcnn_dir, astronaut_jpeg) -> None:
    """More in flight than the grace allows (its batch waits 3 s, the grace is 1 s): every REST
    client gets the JSON 503 ``shutting_down`` (not uvicorn's plain-text 500) and a gRPC call
    UNAVAILABLE; then the process exits cleanly."""
    grace_s = 1.0
    rest_clients = 4
    with running_server(models, {**SLOW_BATCHES, "shutdown_grace_s": grace_s}) as server:
        channel = grpc.insecure_channel(server.grpc_target)
        request = pb.AnalyzeImageRequest(
            image=pb.Image(encoded=astronaut_jpeg), options=pb.AnalysisOptions(task=pb.TASK_DEEPFAKE)
        )
        with channel, ThreadPoolExecutor(rest_clients) as pool, httpx.Client(base_url=server.rest_url) as client:
            client.timeout = 30
            posts = [pool.submit(upload, client, "/v1/deepfake", astronaut_jpeg) for _ in range(rest_clients)]
            call = pb_grpc.FaceSecurityStub(channel).AnalyzeImage.future(request, timeout=30)
            wait_for_queued(server.rest_url, rest_clients + 1)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            for post in posts:
                error(post.result(timeout=grace_s + 5), 503, "shutting_down")
            with pytest.raises(grpc.RpcError) as ended:
                call.result(timeout=grace_s + 5)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dict(ended.value.trailing_metadata())[REASON_KEY] == "shutting_down"
            answered = time.monotonic() - signalled
        code = server.process.wait(timeout=server.stop_bound_s)
    assert code == 0, server.log()
    assert grace_s * 0.9 <= answered < QUEUE_DELAY_S, answered  # at the grace's end, before the batch would run
    assert "ending 5 request(s) still in flight" in server.log()


def test_the_service_runs_without_torch(tmp_path, models, mtcnn_dir, astronaut_jpeg) -> None:
    env = torchless_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and MESSAGE in blocked.stderr
    # Default settings otherwise: no API keys, CORS off.
    with running_server(models, env=env) as server:
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            (face,) = answer(upload(client, "/v1/deepfake", astronaut_jpeg))["faces"]
            assert face["score"] is not None
            preflight = client.options(
                "/v1/deepfake", headers={"origin": "https://app.example", "access-control-request-method": "POST"}
            )
            assert "access-control-allow-origin" not in preflight.headers
