"""``fsfm bench hostile``: the service under hostile and heavy load, as an attacker and a heavy user
would try it (the figures of issue 12), in one run against real ``fsfm serve`` processes on loopback.

Sections, each a figure the service is held to:

- ``inputs``: each hostile input once (``hostile_inputs``: a zero-filled PNG and a smooth JPEG of
  6000x6000, a 64-frame 2000x2000 MP4, a PNG declaring 4000x4000 with only 10 rows of pixel data, a
  4000x4000 JPEG cut in half and closed with an end marker):
  its status and reason, seconds to the answer, and the server's peak RSS growth (Linux ``/proc``:
  the peak is reset through ``clear_refs`` before each request, else sampled).
- ``flood``: a server with a small admission limit (``max_concurrent_requests=1``,
  ``max_waiting_requests=1``) gets many one-face requests at once, each on a connection of its own:
  counts per status and the p99 latency of the 429s, from connecting to the status line (the requests
  are prepared bytes: an HTTP library's own work on the same 2 cores would be counted as the
  server's). Skipped, saying so, where ``Settings`` has no such limits.
- ``abandoned``: clients that give up after ``ABANDON_AFTER_S``, then the next request's latency
  against the idle latency (work nobody waits for should not delay it).
- ``model_names``: ``/metrics`` size before and after requests naming random models.
- ``frozen_redis``: an API node whose Redis queue is frozen (SIGSTOP): seconds to a request's 503 and
  to ``/readyz`` 503, and to readiness again after SIGCONT. Needs ``redis-server`` and the repository's
  ``tests/queue_processes.py`` (a checkout); skipped, saying so, otherwise.

``--quick`` runs every section at reduced sizes (for the tests); the figures then show the shape of
the run, not the service's limits.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.hostile_inputs import cut_closed_jpeg, smooth_jpeg, still_mp4, truncated_png, zero_png
from benchmarks.serve import repository_of, serving
from benchmarks.stats import latency, table
from fsfm.package import ModelPackage
from service.local_server import RunningServer
from service.settings import Settings

ABANDON_AFTER_S = 1.0  # the abandoning clients' timeout, as in the issue
CLIENT_TIMEOUT_S = 120.0  # a hostile input may take long on an unprotected server: measure, do not cut
FLOOD_LIMITS = {"max_concurrent_requests": 1, "max_waiting_requests": 1}
IDLE_REQUESTS = 5  # the idle latency is their median
MIB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    """How big each section is."""

    image_side: int  # the zero PNG and the JPEG
    truncated_side: int  # the truncated PNG's declared side
    video_frames: int
    video_side: int
    flood_requests: int
    flood_concurrency: int
    abandoning_clients: int
    model_names: int


FULL = Scale(6000, 4000, 64, 2000, 150, 75, 60, 1000)
QUICK = Scale(1200, 1000, 8, 480, 24, 12, 12, 100)


# ---- the hostile inputs ------------------------------------------------------------------------


def hostile_inputs(scale: Scale) -> dict[str, tuple[bytes, int]]:
    """name -> (bytes, the designed status)."""
    s = scale
    return {
        f"zero PNG {s.image_side}x{s.image_side}": (zero_png(s.image_side), 200),
        f"JPEG {s.image_side}x{s.image_side}": (smooth_jpeg(s.image_side), 200),
        f"MP4 {s.video_frames} x {s.video_side}x{s.video_side}": (still_mp4(s.video_side, s.video_frames), 200),
        f"truncated PNG {s.truncated_side}x{s.truncated_side}": (truncated_png(s.truncated_side), 400),
        f"JPEG {s.truncated_side}x{s.truncated_side} cut, closed with an end marker": (
            cut_closed_jpeg(s.truncated_side),
            400,
        ),
    }


# ---- measuring the server ------------------------------------------------------------------------


class ServerMemory:
    """A process's resident memory (Linux ``/proc``), in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _field(self, name: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"/proc/{self.pid}/status has no {name}")

    def rss_mib(self) -> float:
        return self._field("VmRSS")

    @contextmanager
    def peak(self) -> Iterator[Callable[[], float]]:
        """Within: the process's peak RSS since entering (read it after the work)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            sampled = [self.rss_mib()]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.005):
                    sampled.append(self.rss_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                yield lambda: max(sampled)
            finally:
                stop.set()
                sampler.join()
            return
        yield lambda: self._field("VmHWM")


def _reason(response: httpx.Response) -> str:
    if response.status_code == 200:
        return ""
    try:
        return response.json()["error"]["reason"]
    except (ValueError, KeyError, TypeError):
        return "unreadable_error"


def _post(client: httpx.Client, data: bytes, **params: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post("/v1/deepfake", params=params, files={"file": ("media", data)})
    return response, time.perf_counter() - started


# ---- the sections ------------------------------------------------------------------------------------


@dataclass
class InputResult:
    name: str
    bytes: int
    expected_status: int
    status: int
    reason: str
    seconds: float
    rss_growth_mib: float


def measure_inputs(server: RunningServer, scale: Scale) -> list[InputResult]:
    memory = ServerMemory(server.process.pid)
    results = []
    with httpx.Client(base_url=server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        for name, (data, expected) in hostile_inputs(scale).items():
            before = memory.rss_mib()
            with memory.peak() as peak:
                response, seconds = _post(client, data)
                growth = max(0.0, peak() - before)
            results.append(
                InputResult(name, len(data), expected, response.status_code, _reason(response), seconds, growth)
            )
    return results


@dataclass
class FloodResult:
    requests: int = 0
    concurrency: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "429", ... -> count
    p99_429_ms: float | None = None
    p50_200_ms: float | None = None
    skipped: str | None = None


def _multipart_request(url: str, data: bytes) -> bytes:
    """The bytes of one ``POST /v1/deepfake`` with ``data`` as the file, built once for the flood."""
    host = url.split("//", 1)[1]
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="face.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/deepfake HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _flood(url: str, data: bytes, requests: int, concurrency: int) -> list[tuple[int, float]]:
    """``requests`` POSTs, ``concurrency`` at a time, each on a connection of its own: (status,
    seconds from connecting to the status line). The request is written as prepared bytes and only
    the status line is read, so the clients' own work (an HTTP library's, ~ms per request on these
    2 shared cores) is not counted as the server's latency."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    payload = _multipart_request(url, data)
    limit = asyncio.Semaphore(concurrency)

    async def one() -> tuple[int, float]:
        async with limit:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(payload)
                status_line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT_S)
                return int(status_line.split()[1]), time.perf_counter() - started
            finally:
                writer.close()

    return await asyncio.gather(*(one() for _ in range(requests)))


def measure_flood(package: ModelPackage, face_jpeg: bytes, scale: Scale) -> FloodResult:
    if missing := [name for name in FLOOD_LIMITS if name not in Settings.model_fields]:
        return FloodResult(skipped=f"this service has no admission limits ({', '.join(missing)})")
    with serving(package, FLOOD_LIMITS) as server:
        answers = asyncio.run(_flood(server.rest_url, face_jpeg, scale.flood_requests, scale.flood_concurrency))
    refused = [seconds for status, seconds in answers if status == 429]
    served = [seconds for status, seconds in answers if status == 200]
    return FloodResult(
        requests=scale.flood_requests,
        concurrency=scale.flood_concurrency,
        statuses={str(k): v for k, v in sorted(Counter(status for status, _ in answers).items())},
        p99_429_ms=latency(refused).p99_ms if refused else None,
        p50_200_ms=latency(served).p50_ms if served else None,
    )


@dataclass
class AbandonedResult:
    clients: int
    gave_up: int
    idle_ms: float
    next_ms: float
    next_status: int

    @property
    def ratio(self) -> float:
        return self.next_ms / self.idle_ms


async def _abandon(url: str, data: bytes, clients: int) -> int:
    """``clients`` requests at once, each given up after ``ABANDON_AFTER_S``; returns how many gave up."""
    async with httpx.AsyncClient(
        base_url=url, timeout=ABANDON_AFTER_S, limits=httpx.Limits(max_connections=clients)
    ) as client:

        async def one() -> bool:
            try:
                await client.post("/v1/deepfake", files={"file": ("face.jpg", data)})
            except httpx.TimeoutException:
                return True
            return False

        return sum(await asyncio.gather(*(one() for _ in range(clients))))


def measure_abandoned(server: RunningServer, face_jpeg: bytes, scale: Scale) -> AbandonedResult:
    with httpx.Client(base_url=server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        idle = [_post(client, face_jpeg)[1] for _ in range(IDLE_REQUESTS)]
    # The next request's client is made now: making one (its SSL context, ~10 ms) is not the server's time.
    with httpx.Client(base_url=server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        gave_up = asyncio.run(_abandon(server.rest_url, face_jpeg, scale.abandoning_clients))
        response, seconds = _post(client, face_jpeg)
    return AbandonedResult(
        scale.abandoning_clients, gave_up, 1000 * float(np.median(idle)), 1000 * seconds, response.status_code
    )


@dataclass
class ModelNamesResult:
    requests: int
    statuses: dict[str, int]
    metrics_bytes_before: int
    metrics_bytes_after: int

    @property
    def growth(self) -> float:
        return self.metrics_bytes_after / self.metrics_bytes_before - 1


async def _random_names(url: str, data: bytes, requests: int) -> list[int]:
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:

        async def one() -> int:
            async with limit:
                name = uuid.uuid4().hex
                response = await client.post("/v1/deepfake", params={"model": name}, files={"file": ("f.jpg", data)})
                return response.status_code

        return await asyncio.gather(*(one() for _ in range(requests)))


def measure_model_names(server: RunningServer, face_jpeg: bytes, scale: Scale) -> ModelNamesResult:
    """After one answered request and one naming an unknown model (every series a request can make
    exists then), ``scale.model_names`` requests naming random models."""
    with httpx.Client(base_url=server.rest_url, timeout=CLIENT_TIMEOUT_S) as client:
        _post(client, face_jpeg)
        _post(client, face_jpeg, model="warm-up")
        before = len(client.get("/metrics").content)
    statuses = asyncio.run(_random_names(server.rest_url, face_jpeg, scale.model_names))
    after = len(httpx.get(server.rest_url + "/metrics").content)
    return ModelNamesResult(scale.model_names, {str(k): v for k, v in sorted(Counter(statuses).items())}, before, after)


@dataclass
class FrozenRedisResult:
    status_before: int | None = None
    refused_status: int | None = None
    refused_reason: str | None = None
    refused_s: float | None = None  # a request sent once Redis is frozen: seconds to its answer
    not_ready_s: float | None = None  # from the freeze to /readyz 503
    recovered_s: float | None = None  # from SIGCONT to /readyz 200
    status_after: int | None = None
    skipped: str | None = None


def _until(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``condition`` holds, or None if it did not within ``timeout_s``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.01)
    return None


def measure_frozen_redis(package: ModelPackage, face_jpeg: bytes) -> FrozenRedisResult:
    if shutil.which("redis-server") is None:
        return FrozenRedisResult(skipped="redis-server is not installed")
    try:
        from tests.queue_processes import running_redis, running_worker
    except ImportError:
        return FrozenRedisResult(skipped="needs the repository's tests/queue_processes.py (run from a checkout)")
    result = FrozenRedisResult()
    with (
        tempfile.TemporaryDirectory(prefix="fsfm-bench-redis-") as tmp,
        repository_of(package) as repository,
        running_redis(Path(tmp)) as redis_server,
        running_worker(repository, redis_server.url, "bench-hostile", {"engine_threads": 1}),
        serving(package, {"queue": redis_server.url}) as server,
        httpx.Client(base_url=server.rest_url, timeout=CLIENT_TIMEOUT_S) as client,
    ):

        def readyz(status: int) -> Callable[[], bool]:
            return lambda: client.get("/readyz").status_code == status

        result.status_before = _post(client, face_jpeg)[0].status_code
        redis_server.freeze()
        try:
            frozen = time.perf_counter()
            response, result.refused_s = _post(client, face_jpeg)
            result.refused_status, result.refused_reason = response.status_code, _reason(response)
            waited = _until(readyz(503), 10.0)
            result.not_ready_s = None if waited is None else time.perf_counter() - frozen
        finally:
            redis_server.thaw()
        result.recovered_s = _until(readyz(200), 30.0)
        result.status_after = _post(client, face_jpeg)[0].status_code
    return result


# ---- the run and its report ---------------------------------------------------------------------------


@dataclass
class HostileReport:
    quick: bool
    inputs: list[InputResult]
    flood: FloodResult
    abandoned: AbandonedResult
    model_names: ModelNamesResult
    frozen_redis: FrozenRedisResult


def run_hostile(
    package: ModelPackage, face_jpeg: bytes, quick: bool = False, say: Callable[[str], None] = print
) -> HostileReport:
    """Every section, each on its own server where it needs its own settings."""
    scale = QUICK if quick else FULL
    with serving(package, {}) as server:
        say("hostile inputs ...")
        inputs = measure_inputs(server, scale)
        say("abandoned requests ...")
        abandoned = measure_abandoned(server, face_jpeg, scale)
        say("random model names ...")
        names = measure_model_names(server, face_jpeg, scale)
    say("flood ...")
    flood = measure_flood(package, face_jpeg, scale)
    say("frozen Redis ...")
    frozen = measure_frozen_redis(package, face_jpeg)
    return HostileReport(quick, inputs, flood, abandoned, names, frozen)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def hostile_tables(report: HostileReport) -> str:
    """The report as Markdown tables, one per section."""
    inputs = table(
        ["input", "bytes", "designed", "status", "seconds", "peak RSS growth MiB"],
        [
            [r.name, f"{r.bytes:,}", r.expected_status, f"{r.status} {r.reason}".strip(), r.seconds, r.rss_growth_mib]
            for r in report.inputs
        ],
    )
    f = report.flood
    flood = (
        f"flood: skipped: {f.skipped}"
        if f.skipped
        else table(
            ["requests", "at once", "statuses", "p99 of 429s ms", "p50 of 200s ms"],
            [
                [
                    f.requests,
                    f.concurrency,
                    ", ".join(f"{k}: {v}" for k, v in f.statuses.items()),
                    "-" if f.p99_429_ms is None else f.p99_429_ms,
                    "-" if f.p50_200_ms is None else f.p50_200_ms,
                ]
            ],
        )
    )
    a = report.abandoned
    abandoned = table(
        ["clients", f"gave up at {ABANDON_AFTER_S:g} s", "idle ms", "next request ms", "next / idle"],
        [[a.clients, a.gave_up, a.idle_ms, f"{a.next_ms:.0f} ({a.next_status})", f"{a.ratio:.2f}"]],
    )
    n = report.model_names
    names = table(
        ["random model names", "statuses", "/metrics bytes before", "after", "growth"],
        [
            [
                n.requests,
                ", ".join(f"{k}: {v}" for k, v in n.statuses.items()),
                f"{n.metrics_bytes_before:,}",
                f"{n.metrics_bytes_after:,}",
                f"{100 * n.growth:+.1f} %",
            ]
        ],
    )
    r = report.frozen_redis
    redis = (
        f"frozen Redis: skipped: {r.skipped}"
        if r.skipped
        else table(
            ["before", "frozen: answer", "ms", "/readyz 503 after ms", "recovered after ms", "after"],
            [
                [
                    r.status_before,
                    f"{r.refused_status} {r.refused_reason}".strip(),
                    _ms(r.refused_s),
                    _ms(r.not_ready_s),
                    _ms(r.recovered_s),
                    r.status_after,
                ]
            ],
        )
    )
    return "\n\n".join(
        [
            "Hostile inputs\n\n" + inputs,
            "Flood\n\n" + flood,
            "Abandoned requests\n\n" + abandoned,
            "Random model names\n\n" + names,
            "Frozen Redis\n\n" + redis,
        ]
    )


def hostile_json(report: HostileReport) -> dict[str, object]:
    """The report as plain JSON values, with the derived figures (ratios) included."""
    from benchmarks.stats import to_jsonable

    body = to_jsonable(report)
    assert isinstance(body, dict)
    body["abandoned"]["ratio"] = report.abandoned.ratio
    body["model_names"]["growth"] = report.model_names.growth
    return body
