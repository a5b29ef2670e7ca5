"""``fsfm bench serve``: drive a running service at a sweep of concurrency levels, as Triton's
perf_analyzer does, over REST (one image per request), gRPC ``AnalyzeImage`` and gRPC ``Analyze``
streams (raw RGB frames, one frame in flight per stream).

Each level is a closed loop: ``concurrency`` clients each send a request, wait for its answer and
send the next. Measurement starts once ``concurrency`` answers have come back (every client has
been through the queue once: steady state) and lasts ``duration_s``; throughput (the rate at which
answers arrive, ``completion_rate``) and latency are taken from the answers that arrive inside that
window, and the service's mean batch size and stage times are the change of its Prometheus metrics
over the same window. Afterwards the clients stop sending and
the requests still in flight are awaited, so the next level starts on an empty queue.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np

from benchmarks.stats import Latency, latency, table
from fsfm.imaging import decode_image
from fsfm.package import ModelPackage
from service.local_server import MetricSamples, RunningServer, metric, parse_metrics, running_server

PROTOCOLS = ("rest", "grpc", "stream")
CLIENT_TIMEOUT_S = 600.0  # the server's own deadline answers first
STAGES = ("decode", "detect", "queue", "infer", "total")


@dataclass
class Target:
    """A service and what to ask it."""

    rest_url: str
    grpc_target: str | None = None
    task: str = "deepfake"
    model: str | None = None  # None: the task's default model
    api_key: str | None = None


@dataclass
class LevelResult:
    protocol: str
    concurrency: int
    window_s: float
    requests: int  # answered successfully inside the window
    requests_per_s: float
    faces_per_s: float  # judged faces per second
    latency: Latency
    errors: dict[str, int]  # reason -> count, inside the window
    mean_batch_size: float | None  # from the service's metrics over the window
    stage_ms: dict[str, float] = field(default_factory=dict)  # the service's mean per stage


class RequestFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Call = Callable[[], Awaitable[int]]  # one request; returns the number of judged faces


class LoadClient(Protocol):
    def slot(self) -> AbstractAsyncContextManager[Call]:
        """What one of the ``concurrency`` clients calls in its loop."""
        ...

    async def close(self) -> None: ...


class RestClient:
    """``POST /v1/<task>`` with the image as a multipart file, over a keep-alive connection pool."""

    def __init__(self, target: Target, data: bytes, concurrency: int) -> None:
        self.target = target
        self.data = data
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"x-api-key": target.api_key} if target.api_key else {}
        self.http = httpx.AsyncClient(
            base_url=target.rest_url, limits=limits, timeout=CLIENT_TIMEOUT_S, headers=headers
        )
        self.params = {"model": target.model} if target.model else {}

    async def call(self) -> int:
        try:
            response = await self.http.post(
                f"/v1/{self.target.task}", params=self.params, files={"file": ("image", self.data)}
            )
        except httpx.HTTPError as exc:
            raise RequestFailed(type(exc).__name__) from None
        if response.status_code != 200:
            try:
                reason = response.json()["error"]["reason"]
            except (ValueError, KeyError, TypeError):
                reason = "unreadable_error"
            raise RequestFailed(f"{response.status_code} {reason}")
        return sum("score" in face for face in response.json()["faces"])

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Call]:
        yield self.call

    async def close(self) -> None:
        await self.http.aclose()


class _GrpcClient:
    def __init__(self, target: Target, data: bytes) -> None:
        import grpc

        from service.grpc_stubs import pb, pb_grpc

        if target.grpc_target is None:
            raise ValueError("this service has no gRPC address")
        self.grpc = grpc
        self.pb = pb
        size = max(len(data), 3 * decode_image(data).size) + (1 << 20)
        self.channel = grpc.aio.insecure_channel(
            target.grpc_target,
            options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)],
        )
        self.stub = pb_grpc.FaceSecurityStub(self.channel)
        self.metadata = (("x-api-key", target.api_key),) if target.api_key else ()
        self.options = pb.AnalysisOptions(task=pb.Task.Value(f"TASK_{target.task.upper()}"), model=target.model or "")

    async def close(self) -> None:
        await self.channel.close()


class GrpcImageClient(_GrpcClient):
    """``AnalyzeImage`` with the encoded image, all clients multiplexed on one channel."""

    def __init__(self, target: Target, data: bytes) -> None:
        super().__init__(target, data)
        self.request = self.pb.AnalyzeImageRequest(image=self.pb.Image(encoded=data), options=self.options)

    async def call(self) -> int:
        try:
            reply = await self.stub.AnalyzeImage(self.request, metadata=self.metadata, timeout=CLIENT_TIMEOUT_S)
        except self.grpc.aio.AioRpcError as exc:
            raise RequestFailed(exc.code().name) from None
        return sum(face.judged for face in reply.faces)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Call]:
        yield self.call


class GrpcStreamClient(_GrpcClient):
    """One ``Analyze`` stream per client, sending the image as raw RGB frames (what a camera or
    video decoder hands over), the next frame once the previous one's result is back."""

    def __init__(self, target: Target, data: bytes) -> None:
        super().__init__(target, data)
        pixels = decode_image(data)
        raw = self.pb.RawImage(width=pixels.shape[1], height=pixels.shape[0], rgb=pixels.tobytes())
        self.frame = self.pb.Frame(image=self.pb.Image(raw=raw), options=self.options)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Call]:
        stream = self.stub.Analyze(metadata=self.metadata, timeout=CLIENT_TIMEOUT_S)

        async def call() -> int:
            try:
                await stream.write(self.frame)
                result = await stream.read()
            except self.grpc.aio.AioRpcError as exc:
                raise RequestFailed(exc.code().name) from None
            if result is self.grpc.aio.EOF:
                raise RequestFailed("stream_ended")
            if result.HasField("error"):
                raise RequestFailed(result.error.reason)
            return sum(face.judged for face in result.analysis.faces)

        try:
            yield call
        finally:
            stream.cancel()


def load_client(protocol: str, target: Target, data: bytes, concurrency: int) -> LoadClient:
    if protocol == "rest":
        return RestClient(target, data, concurrency)
    if protocol == "grpc":
        return GrpcImageClient(target, data)
    if protocol == "stream":
        return GrpcStreamClient(target, data)
    raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


@dataclass
class _Answer:
    end: float
    seconds: float
    faces: int
    error: str | None


async def run_level(protocol: str, target: Target, data: bytes, concurrency: int, duration_s: float) -> LevelResult:
    """One closed-loop level (module docstring)."""
    client = load_client(protocol, target, data, concurrency)
    answers: list[_Answer] = []
    warm = asyncio.Event()
    stop = asyncio.Event()

    async def loop() -> None:
        async with client.slot() as call:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    faces, error = await call(), None
                except RequestFailed as exc:
                    faces, error = 0, exc.reason
                ended = time.perf_counter()
                answers.append(_Answer(ended, ended - started, faces, error))
                if len(answers) >= concurrency:
                    warm.set()

    metrics = httpx.AsyncClient(base_url=target.rest_url, timeout=30)
    clients = [asyncio.create_task(loop()) for _ in range(concurrency)]
    try:
        await _until(warm, clients)
        before, opened = await _scrape(metrics), time.perf_counter()
        await _sleep_watching(duration_s, clients)
        after, closed = await _scrape(metrics), time.perf_counter()
        stop.set()
        await asyncio.gather(*clients)
    finally:
        stop.set()
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await client.close()
        await metrics.aclose()
    inside = [a for a in answers if opened <= a.end <= closed]
    good = [a for a in inside if a.error is None]
    window = closed - opened
    return LevelResult(
        protocol=protocol,
        concurrency=concurrency,
        window_s=window,
        requests=len(good),
        requests_per_s=completion_rate([a.end for a in good], [1] * len(good), window),
        faces_per_s=completion_rate([a.end for a in good], [a.faces for a in good], window),
        latency=latency([a.seconds for a in good]),
        errors=dict(Counter(a.error for a in inside if a.error is not None)),
        mean_batch_size=_mean_change(before, after, "fsfm_batch_size"),
        stage_ms={
            stage: 1000 * mean
            for stage in STAGES
            if (mean := _mean_change(before, after, "fsfm_stage_duration_seconds", stage=stage)) is not None
        },
    )


def completion_rate(ends: Sequence[float], amounts: Sequence[int], window_s: float) -> float:
    """Work completed per second: the least-squares slope of the cumulative amount against the
    completion times. Under load the service answers a batch at a time, so answers come in steps
    (e.g. 8 faces every 2.3 s); counting answers inside the window would add or drop a whole step
    depending on where its edges fall (+-5 % over 30 s), while the slope of the staircase does not
    depend on them. With fewer than three answers: the amount over the window."""
    if len(ends) < 3 or max(ends) == min(ends):
        return sum(amounts) / window_s
    order = np.argsort(ends)
    t = np.asarray(ends, dtype=np.float64)[order]
    done = np.cumsum(np.asarray(amounts, dtype=np.float64)[order])
    return float(np.polyfit(t - t[0], done, 1)[0])


async def _until(event: asyncio.Event, clients: Sequence[asyncio.Task[None]]) -> None:
    """Wait for ``event``; a client that crashed meanwhile raises its exception here."""
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait([waiter, *clients], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            task.result()
        raise RuntimeError("the load clients stopped before the service answered")


async def _sleep_watching(seconds: float, clients: Sequence[asyncio.Task[None]]) -> None:
    done, _ = await asyncio.wait(clients, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        task.result()


async def _scrape(http: httpx.AsyncClient) -> MetricSamples:
    response = await http.get("/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


def _mean_change(before: MetricSamples, after: MetricSamples, histogram: str, **labels: str) -> float | None:
    """The mean of a histogram's observations between two scrapes (None if there were none)."""
    count = metric(after, f"{histogram}_count", **labels) - metric(before, f"{histogram}_count", **labels)
    total = metric(after, f"{histogram}_sum", **labels) - metric(before, f"{histogram}_sum", **labels)
    return total / count if count > 0 else None


def plan(protocols: Sequence[str], levels: Sequence[int]) -> list[tuple[str, int]]:
    """Every protocol at every concurrency level, protocol by protocol."""
    return [(protocol, concurrency) for protocol in protocols for concurrency in levels]


async def sweep(
    target: Target,
    data: bytes,
    runs: Sequence[tuple[str, int]],
    duration_s: float,
    report: Callable[[LevelResult], None] = lambda _: None,
) -> list[LevelResult]:
    """Each (protocol, concurrency) level in order; ``report`` sees each result as it comes."""
    results = []
    for protocol, concurrency in runs:
        result = await run_level(protocol, target, data, concurrency, duration_s)
        report(result)
        results.append(result)
    return results


def level_line(r: LevelResult) -> str:
    """One finished level, as a progress line."""
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "none"
    batch = "-" if r.mean_batch_size is None else f"{r.mean_batch_size:.2f}"
    return (
        f"{r.protocol} c={r.concurrency}: {r.requests_per_s:.3g} req/s, {r.faces_per_s:.3g} faces/s, "
        f"p50/p95/p99 {r.latency.p50_ms:.0f}/{r.latency.p95_ms:.0f}/{r.latency.p99_ms:.0f} ms, "
        f"mean batch {batch}, errors {errors}"
    )


def serve_table(results: Sequence[LevelResult]) -> str:
    return table(
        [
            "protocol",
            "concurrency",
            "requests",
            "req/s",
            "faces/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "mean batch",
            "errors",
        ],
        [
            [
                r.protocol,
                r.concurrency,
                r.requests,
                r.requests_per_s,
                r.faces_per_s,
                r.latency.p50_ms,
                r.latency.p95_ms,
                r.latency.p99_ms,
                "-" if r.mean_batch_size is None else f"{r.mean_batch_size:.2f}",
                ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0",
            ]
            for r in results
        ],
    )


@contextmanager
def repository_of(package: ModelPackage) -> Iterator[Path]:
    """A temporary model repository holding only ``package`` (a link to it)."""
    manifest = package.manifest
    with tempfile.TemporaryDirectory(prefix="fsfm-bench-") as tmp:
        link = Path(tmp) / manifest.name / str(manifest.version)
        link.parent.mkdir()
        link.symlink_to(package.path.resolve(), target_is_directory=True)
        yield Path(tmp)


@contextmanager
def serving(package: ModelPackage, settings: Mapping[str, object]) -> Iterator[RunningServer]:
    """``fsfm serve`` in a child process on free loopback ports, serving only ``package``
    (``repository_of``), with ``settings`` as its ``FSFM_*`` variables."""
    with repository_of(package) as repository, running_server(repository, settings, startup_timeout_s=300) as server:
        yield server


@contextmanager
def served(package: ModelPackage, settings: Mapping[str, object]) -> Iterator[Target]:
    """``serving``, as the ``Target`` that asks for ``package``'s model."""
    with serving(package, settings) as server:
        yield Target(server.rest_url, server.grpc_target, task=package.manifest.task, model=package.manifest.ref)
