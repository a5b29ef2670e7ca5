"""Asynchronous jobs on real ``fsfm serve`` processes: in process (``FSFM_QUEUE=local``) and with a Redis
queue (a private ``redis-server``, an ``fsfm worker``, API nodes restarted and killed), webhooks
received by a real HTTP server on loopback that verifies their signatures with
``service.jobs.webhooks.verify_signature``. Every server runs in an empty working and temp directory
that must stay empty (``writes_nothing``): media never touches the disk.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.jobs.webhooks import JOB_ID_HEADER, SIGNATURE_HEADER, sign, verify_signature
from service.rest.routes.jobs import JobResponse
from tests.queue_processes import running_redis, running_worker
from tests.servers import REPO_ROOT, RunningServer, metric, running_server, scrape, writes_nothing
from tests.test_rest import error, make_video

SECRET = "whsec-test-4f1c2a9e"
MODEL = "tiny-deepfake:1"
SLOW_FRAMES = 96  # frames of the slow video: MTCNN from 20 pixels on each takes many seconds in all, so a
# cancel or a kill seen after the first progress report (about a second in) always lands mid-video
SLOW_SETTINGS = {"detector": "mtcnn", "min_face_size": 20, "job_max_video_frames": SLOW_FRAMES}
FINISHED = ("succeeded", "failed", "cancelled")


# ---- a webhook receiver --------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    url: str
    failures: int  # the first deliveries answered 503
    received: list[Received] = field(default_factory=list)


@contextmanager
def webhook_receiver(failures: int = 0) -> Iterator[Receiver]:
    """An HTTP server on loopback that records every POST, verifies its signature as a user's receiver
    would, and answers 503 to the first ``failures`` of them, 200 after."""
    receiver = Receiver("", failures)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            verified = verify_signature(SECRET, body, self.headers.get(SIGNATURE_HEADER, ""))
            receiver.received.append(Received(dict(self.headers), body, verified))
            self.send_response(503 if len(receiver.received) <= receiver.failures else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/fsfm"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# ---- helpers -------------------------------------------------------------------------------------


def submit(
    client: httpx.Client, media: bytes, task: str = "deepfake", key: str | None = None, **params
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/jobs", data={"task": task, **params}, files={"file": ("m", media)}, headers=headers)


def accepted(response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    job = response.json()
    JobResponse.model_validate(job)
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    return job


def until(client: httpx.Client, job_id: str, done: Callable[[dict], bool], timeout_s: float = 60) -> dict:
    """Poll the job until ``done(job)``."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if done(job):
            JobResponse.model_validate(job)
            return job
        assert time.monotonic() < deadline, f"the job never got there: {job}"
        time.sleep(0.05)


def finished(job: dict) -> bool:
    return job["status"] in FINISHED


def comparable(analysis: dict) -> dict:
    """An analysis response without what differs between two calls on the same media."""
    return {key: value for key, value in analysis.items() if key not in ("request_id", "timing_ms")}


def sync_answer(client: httpx.Client, media: bytes, **params) -> dict:
    response = client.post("/v1/deepfake", data=params, files={"file": ("m", media)})
    assert response.status_code == 200, response.text
    return response.json()


def core_idle(server: RunningServer) -> bool:
    return metric(scrape(server.rest_url), "fsfm_admitted_requests") == 0


def frames_detected(server: RunningServer) -> float:
    return metric(scrape(server.rest_url), "fsfm_faces_per_input_count")


@pytest.fixture(scope="module")
def clip(astronaut_rgb) -> bytes:
    """2 s at 5 fps: the astronaut brightening."""
    return make_video(
        [np.clip(astronaut_rgb * (0.6 + 0.05 * k), 0, 255).astype(np.uint8) for k in range(10)], "mp4", "mpeg4"
    )


@pytest.fixture(scope="module")
def slow_video(astronaut_rgb) -> bytes:
    """``SLOW_FRAMES`` frames of the astronaut, each a little brighter: one face to find per frame."""
    frames = [np.clip(astronaut_rgb * (0.6 + 0.005 * k), 0, 255).astype(np.uint8) for k in range(SLOW_FRAMES)]
    return make_video(frames, "mp4", "mpeg4", fps=25)


# ---- in process ----------------------------------------------------------------------------------

LOCAL_SETTINGS = {
    **SLOW_SETTINGS,
    "webhook_secret": SECRET,
    "webhook_backoff_s": 0.05,
    "webhook_max_attempts": 3,
    "webhook_allowed_hosts": ["127.0.0.1"],  # the receiver's
    "max_video_frames": 4,  # the synchronous ceiling; jobs take SLOW_FRAMES
    "max_video_seconds": 3,  # synchronous: the 2 s clip, not the slow video (3.84 s); jobs take 600 s
    "job_max_upload_bytes": 4 * 1024 * 1024,
    "max_pending_job_bytes": 2 * 1024 * 1024,
}


@pytest.fixture(scope="module")
def local(models, mtcnn_dir, tmp_path_factory) -> Iterator[RunningServer]:
    with (
        writes_nothing(tmp_path_factory.mktemp("local")) as (cwd, env),
        running_server(models, LOCAL_SETTINGS, grpc=False, cwd=cwd, env=env) as server,
    ):
        yield server


@pytest.fixture(scope="module")
def client(local) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local.rest_url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("media", ["image", "video"])
def test_a_job_answers_what_the_synchronous_call_does_and_its_webhook_is_signed(
    client, astronaut_jpeg, clip, media
) -> None:
    data, params = (astronaut_jpeg, {}) if media == "image" else (clip, {"max_frames": 4})
    with webhook_receiver() as receiver:
        job = accepted(submit(client, data, callback_url=receiver.url, **params))
        assert job["status"] in ("queued", "running") and job["result"] is None
        assert job["webhook"] == {"url": receiver.url, "deliveries": []}
        done = until(client, job["job_id"], lambda j: finished(j) and bool(j["webhook"]["deliveries"]))
    assert done["status"] == "succeeded" and done["error"] is None, done
    assert done["expires_at"] > done["updated_at"]
    assert comparable(done["result"]) == comparable(sync_answer(client, data, **params))
    frames = len(done["result"]["frames"]) if media == "video" else 1
    assert done["progress"] == {"frames_done": frames, "frames_total": frames}
    (delivery,) = receiver.received
    assert delivery.verified  # the receiver checked the signature with verify_signature
    assert delivery.headers[JOB_ID_HEADER] == job["job_id"]
    assert delivery.headers["Content-Type"] == "application/json"
    delivered = json.loads(delivery.body)
    assert delivered["status"] == "succeeded" and delivered["result"] == done["result"]
    assert [(d["attempt"], d["status_code"], d["error"]) for d in done["webhook"]["deliveries"]] == [(1, 200, None)]


def documented_verify_signature() -> Callable[..., bool]:
    """The ``verify_signature`` of docs/api.md's snippet, which users copy into their receivers."""
    docs = (REPO_ROOT / "docs" / "api.md").read_text()
    snippet = docs.split("### Webhooks", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(snippet, "docs/api.md", "exec"), namespace)
    return namespace["verify_signature"]  # type: ignore[return-value]


@pytest.mark.parametrize("verify", [verify_signature, documented_verify_signature()], ids=["module", "docs"])
def test_a_signature_is_refused_for_another_secret_another_body_or_an_old_timestamp(verify) -> None:
    body = b'{"job_id": "x"}'
    header = sign(SECRET, body)
    assert verify(SECRET, body, header)
    assert not verify("another-secret", body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify(SECRET, body, sign(SECRET, body, timestamp=int(time.time()) - 3600))
    assert not verify(SECRET, body, "v1=" + header.split("v1=")[1])  # no timestamp
    rotated = f"{header},v1={'0' * 64}"  # a second signature (secret rotation): any matching one counts
    assert verify(SECRET, body, rotated)


def test_a_failing_receiver_gets_the_webhook_again_and_each_delivery_is_recorded(local, client, astronaut_jpeg) -> None:
    with webhook_receiver(failures=2) as receiver:
        job = accepted(submit(client, astronaut_jpeg, callback_url=receiver.url))
        done = until(client, job["job_id"], lambda j: len((j["webhook"] or {}).get("deliveries", [])) == 3)
    deliveries = done["webhook"]["deliveries"]
    assert [(d["attempt"], d["status_code"]) for d in deliveries] == [(1, 503), (2, 503), (3, 200)]
    assert [d["error"] is None for d in deliveries] == [False, False, True]
    assert all(r.verified for r in receiver.received) and len(receiver.received) == 3
    # each attempt carries the job as it was then: the deliveries before it
    assert [len(json.loads(r.body)["webhook"]["deliveries"]) for r in receiver.received] == [0, 1, 2]
    samples = scrape(local.rest_url)
    assert metric(samples, "fsfm_webhook_deliveries_total", outcome="failed") >= 2
    assert metric(samples, "fsfm_webhook_deliveries_total", outcome="delivered") >= 1


def test_a_retried_submission_with_the_same_idempotency_key_gets_the_same_job(client, astronaut_jpeg, clip) -> None:
    key = f"retry-{time.monotonic_ns()}"
    first = accepted(submit(client, astronaut_jpeg, key=key))
    again = submit(client, astronaut_jpeg, key=key)
    assert accepted(again)["job_id"] == first["job_id"] and again.headers["idempotent-replayed"] == "true"
    until(client, first["job_id"], finished)
    assert accepted(submit(client, astronaut_jpeg, key=key))["job_id"] == first["job_id"]  # finished: still the same
    error(submit(client, clip, key=key), 422, "idempotency_key_reused")  # the key on other media
    error(submit(client, astronaut_jpeg, key=key, threshold=0.2), 422, "idempotency_key_reused")
    assert accepted(submit(client, astronaut_jpeg))["job_id"] != first["job_id"]  # no key: a new job


def test_a_video_too_long_for_the_synchronous_call_runs_as_a_job_and_cancel_stops_its_work(
    local, client, slow_video
) -> None:
    until_idle(local)
    error(client.post("/v1/deepfake", files={"file": ("m", slow_video)}), 413, "video_too_long")  # as a job: fine
    detected_before = frames_detected(local)
    job = accepted(submit(client, slow_video))
    running = until(client, job["job_id"], lambda j: j["progress"]["frames_done"] >= 2 or finished(j))
    assert running["status"] == "running", running
    assert running["progress"]["frames_total"] == SLOW_FRAMES  # jobs take more frames than the synchronous 4
    cancel = client.delete(f"/v1/jobs/{job['job_id']}")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    until_idle(local)  # the core has let the job's work go
    cancelled = until(client, job["job_id"], finished)
    assert cancelled["status"] == "cancelled" and cancelled["result"] is None
    done = cancelled["progress"]["frames_done"]
    assert 2 <= done < SLOW_FRAMES  # progress stopped where the work stopped
    assert frames_detected(local) - detected_before < SLOW_FRAMES  # the detector saw fewer frames than the video has
    samples = scrape(local.rest_url)
    assert metric(samples, "fsfm_request_failure_total", transport="job", reason="cancelled") == 1
    assert metric(samples, "fsfm_jobs_finished_total", status="cancelled") == 1
    assert metric(samples, "fsfm_jobs", state="running") == metric(samples, "fsfm_jobs", state="queued") == 0
    # cancelling again answers the cancelled job; a finished job cannot be cancelled
    assert client.delete(f"/v1/jobs/{job['job_id']}").json() == client.get(f"/v1/jobs/{job['job_id']}").json()


def until_idle(server: RunningServer, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not core_idle(server):
        assert time.monotonic() < deadline, "the core never went idle"
        time.sleep(0.05)


def test_job_requests_are_checked_before_the_job_is_accepted(client, astronaut_jpeg) -> None:
    unknown = "0123456789abcdef0123456789abcdef"
    error(client.get(f"/v1/jobs/{unknown}"), 404, "job_not_found")
    error(client.get("/v1/jobs/not-a-job"), 404, "job_not_found")
    error(client.delete(f"/v1/jobs/{unknown}"), 404, "job_not_found")
    done = until(client, accepted(submit(client, astronaut_jpeg))["job_id"], finished)
    error(client.delete(f"/v1/jobs/{done['job_id']}"), 409, "job_finished")
    error(client.post("/v1/jobs", files={"file": ("m", astronaut_jpeg)}), 422, "invalid_parameter")  # no task
    error(submit(client, astronaut_jpeg, task="palmistry"), 422, "invalid_parameter")
    error(submit(client, astronaut_jpeg, task="liveness"), 404, "task_not_served")
    error(submit(client, astronaut_jpeg, model="no-such-model"), 404, "model_not_found")
    error(submit(client, astronaut_jpeg, max_frames=SLOW_FRAMES + 1), 422, "invalid_parameter")
    error(submit(client, b"GIF89a not a face"), 415, "unsupported_type")
    error(submit(client, astronaut_jpeg, callback_url="ftp://hooks.example.com/x"), 400, "bad_callback_url")
    error(submit(client, astronaut_jpeg, callback_url="http://user:pw@127.0.0.1/"), 400, "bad_callback_url")
    error(submit(client, astronaut_jpeg, callback_url="http://169.254.169.254/x"), 400, "callback_host_not_allowed")
    # a body past the node's media budget for pending jobs: refused before it is read
    refused = submit(client, b"\0" * (3 * 1024 * 1024))
    error(refused, 429, "too_many_jobs")
    assert int(refused.headers["retry-after"]) >= 1


# ---- with a Redis queue: any node answers, restarts keep jobs, a dead node's jobs fail -------------


@pytest.fixture(scope="module")
def redis_stack(models, mtcnn_dir, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A private Redis and a worker; yields the queue URL and the models, for API nodes started by the tests."""
    with (
        running_redis(tmp_path_factory.mktemp("redis")) as redis_server,
        running_worker(models, redis_server.url, "jobs-worker"),
    ):
        yield redis_server.url, models


@contextmanager
def api_node(redis_stack, root: Path, **settings: object) -> Iterator[RunningServer]:
    url, models = redis_stack
    chosen = {**SLOW_SETTINGS, "queue": url, "max_pending_jobs": 1, **settings}
    root.mkdir()
    with writes_nothing(root) as (cwd, env), running_server(models, chosen, grpc=False, cwd=cwd, env=env) as server:
        yield server


def test_in_redis_mode_a_job_survives_its_node_and_any_node_answers(
    redis_stack, tmp_path, astronaut_jpeg, slow_video
) -> None:
    with api_node(redis_stack, tmp_path / "a") as a, httpx.Client(base_url=a.rest_url, timeout=60) as client:
        job = accepted(submit(client, astronaut_jpeg))
        done = until(client, job["job_id"], finished)
        assert done["status"] == "succeeded"
        assert comparable(done["result"]) == comparable(sync_answer(client, astronaut_jpeg))
        # without a webhook secret, a callback_url is refused
        error(submit(client, astronaut_jpeg, callback_url="http://127.0.0.1:9/x"), 400, "webhooks_not_configured")
    with api_node(redis_stack, tmp_path / "b") as b, httpx.Client(base_url=b.rest_url, timeout=60) as client:
        assert client.get(f"/v1/jobs/{job['job_id']}").json() == done  # another process, the same job
        slow = accepted(submit(client, slow_video))
        error(submit(client, astronaut_jpeg), 429, "too_many_jobs")  # max_pending_jobs 1
        until(client, slow["job_id"], lambda j: j["progress"]["frames_done"] >= 1)
        b.process.kill()  # the node dies with its job running
        b.process.wait()
    with api_node(redis_stack, tmp_path / "c") as c, httpx.Client(base_url=c.rest_url, timeout=60) as client:
        lost = until(client, slow["job_id"], finished, timeout_s=30)  # once the dead node's lease lapses
        assert lost["status"] == "failed" and lost["error"]["reason"] == "interrupted"
        assert lost["progress"]["frames_done"] < SLOW_FRAMES


def test_in_redis_mode_a_job_is_cancelled_from_another_node_and_a_shutdown_interrupts_one(
    redis_stack, tmp_path, slow_video
) -> None:
    with (
        api_node(redis_stack, tmp_path / "a", shutdown_grace_s=1) as a,
        api_node(redis_stack, tmp_path / "b") as b,
        httpx.Client(base_url=a.rest_url, timeout=60) as on_a,
        httpx.Client(base_url=b.rest_url, timeout=60) as on_b,
    ):
        job = accepted(submit(on_a, slow_video))
        until(on_b, job["job_id"], lambda j: j["progress"]["frames_done"] >= 2)  # B sees A's progress
        assert on_b.delete(f"/v1/jobs/{job['job_id']}").json()["status"] == "cancelled"
        until_idle(a)  # A's heartbeat found the cancellation and stopped the work
        cancelled = until(on_a, job["job_id"], finished)
        assert cancelled["status"] == "cancelled" and cancelled["progress"]["frames_done"] < SLOW_FRAMES
        assert frames_detected(a) < SLOW_FRAMES
        assert metric(scrape(a.rest_url), "fsfm_request_failure_total", transport="job", reason="cancelled") == 1
        # A shuts down (SIGTERM) with a job running: past the grace period it ends the job as interrupted
        job = accepted(submit(on_a, slow_video))
        until(on_b, job["job_id"], lambda j: j["progress"]["frames_done"] >= 1)
        a.terminate()  # exits 0 within its bound
        interrupted = on_b.get(f"/v1/jobs/{job['job_id']}").json()  # at once: no lease to wait for
        assert interrupted["status"] == "failed" and interrupted["error"]["reason"] == "interrupted", interrupted


def test_the_openapi_document_describes_jobs(client) -> None:
    spec = client.get("/openapi.json").json()
    submit_op = spec["paths"]["/v1/jobs"]["post"]
    form = submit_op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "task"] and {"callback_url", "max_frames", "model"} <= set(form["properties"])
    assert "Idempotency-Key" in {p["name"] for p in submit_op["parameters"]}
    assert submit_op["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobResponse")
    assert "Retry-After" in submit_op["responses"]["429"]["headers"]
    assert {"Location", "Idempotent-Replayed"} <= set(submit_op["responses"]["202"]["headers"])
    assert "409" in spec["paths"]["/v1/jobs/{job_id}"]["delete"]["responses"]
    examples = spec["components"]["schemas"]["JobResponse"]["examples"]
    assert [example["status"] for example in examples] == ["running", "succeeded"]
    for example in examples:
        JobResponse.model_validate(example)
