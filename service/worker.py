"""``fsfm worker``: runs the models for API nodes, taking their faces from Redis Streams (docs/scaling.md).

Per model, a consumer in the group ``workers`` takes a batch with XREADGROUP COUNT=max_batch_size and
tops it up for at most max_queue_delay_ms (Triton's dynamic-batching rule, with Redis as the queue:
under load the stream fills while the engine runs, so batches grow by themselves). Faces whose
deadline passed are dropped, not computed. The batch runs on the engine's own thread; each face's
answer goes to the reply stream of the API node that waits for it; then the entries are acknowledged
and deleted, all in one round trip.

Nothing is lost when a worker dies: the faces it held stay pending in the group, and a live worker
claims those idle longer than ``claim_timeout_s`` (XAUTOCLAIM) and answers them. A batch that fails
is rerun face by face, so a poison face fails alone; a face that fails is handed back for redelivery
at once, and at its ``max_deliveries``-th delivery it goes to the dead-letter stream with its error,
and its request gets that error. Each answer carries every named output of the engine; a work item
in another version of the wire format is answered with ``wire_version_mismatch``, not computed
(``service.redis_queue`` describes the format).

SIGTERM: stop taking work, finish the batch in hand, close the engines, leave the group, exit.
``/metrics``, ``/healthz`` and ``/readyz`` are served on ``metrics_port`` by the API's own operations
routes (``service/rest/routes/operations.py``), so a worker's readiness has the API's shape.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import uvicorn
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from fsfm.engines.base import Engine
from fsfm.package import ModelPackage, ModelRepository
from service.batcher import Rows, split_rows
from service.engines import load_engine
from service.metrics import Metrics
from service.readiness import not_ready_reason
from service.redis_queue import (
    COMMAND_TIMEOUT_S,
    DEAD_LETTER_MAXLEN,
    GROUP,
    RECONNECT_DELAY_S,
    REPLY_MAXLEN,
    REPLY_TTL_S,
    VERSION_MISMATCH,
    Address,
    QueueHealth,
    QueueMetrics,
    Reply,
    WireError,
    WireVersionError,
    WorkItem,
    connect,
    dead_letter_stream,
    describe,
    is_connection_error,
    monitor_streams,
    work_stream,
)
from service.rest.app import create_probe_app
from service.server import HttpServer, listen
from service.worker_settings import WorkerSettings

log = logging.getLogger("fsfm.worker")

MAX_POLL_S = 1.0  # longest blocking read: bounds how late a stop or a claim scan starts


@dataclass
class Delivery:
    """A work-stream entry as this consumer received it."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    count: int  # times delivered, this delivery included


class _Outcome:
    """Everything one batch leads to, sent in one round trip: replies, faces handed back for
    redelivery, dead letters, and the acknowledgement and deletion of the answered entries."""

    def __init__(self, consumer: ModelConsumer) -> None:
        self._consumer = consumer
        self._pipe = consumer.redis.pipeline(transaction=False)
        self._finished: list[bytes] = []
        self._reply_streams: set[str] = set()

    def reply(self, delivery: Delivery, address: Address, reply: Reply) -> None:
        self._pipe.xadd(address.reply_to, reply.encode(), maxlen=REPLY_MAXLEN, approximate=True)
        self._reply_streams.add(address.reply_to)
        self.finish(delivery)

    def finish(self, delivery: Delivery) -> None:
        self._finished.append(delivery.entry_id)

    def hand_back(self, delivery: Delivery) -> None:
        """Keep the face pending but make it look idle past the claim timeout, so the next claim scan
        of any worker takes it (and counts a delivery). JUSTID leaves the count as it is here."""
        c = self._consumer
        self._pipe.xclaim(c.stream, GROUP, c.name, 0, [delivery.entry_id], idle=c.claim_ms + 1, justid=True)

    def refuse_version(self, delivery: Delivery, error: WireVersionError) -> None:
        """Answer an item of another wire version with the error, uncomputed (no delivery can fix it,
        and it is no poison face: an upgrade is)."""
        c = self._consumer
        log.warning("model %s: refusing entry %s: %s", c.model, delivery.entry_id.decode(), error)
        address = Address.decode(delivery.fields)  # decoded before the version was checked
        message = f"worker {c.name} got a work item in {error}: run one fsfm version on API nodes and workers"
        reply = Reply(address.request_id, address.index, reason=VERSION_MISMATCH, message=message)
        self.reply(delivery, address, reply)

    def dead_letter(self, delivery: Delivery, error: str) -> None:
        """Move the face to the dead-letter stream with its error, and tell its request."""
        c = self._consumer
        log.error(
            "model %s: dead-lettering entry %s after %d deliveries: %s",
            c.model,
            delivery.entry_id.decode(),
            delivery.count,
            error,
        )
        record = {
            **delivery.fields,
            b"error": error,
            b"deliveries": str(delivery.count),
            b"entry": delivery.entry_id,
            b"consumer": c.name,
        }
        self._pipe.xadd(c.dead_stream, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        c.queue_metrics.dead_letters.labels(c.model).inc()
        try:
            address = Address.decode(delivery.fields)
        except WireError:
            self.finish(delivery)  # no one to tell
            return
        message = f"face {address.index} went to the dead-letter stream {c.dead_stream}: {error}"
        reply = Reply(address.request_id, address.index, reason="inference_failed", message=message)
        self.reply(delivery, address, reply)

    async def send(self) -> None:
        c = self._consumer
        for stream in self._reply_streams:
            self._pipe.expire(stream, REPLY_TTL_S)
        if self._finished:
            self._pipe.xack(c.stream, GROUP, *self._finished)
            self._pipe.xdel(c.stream, *self._finished)
        await self._pipe.execute()


class ModelConsumer:
    """One model on this worker: take a batch, run it, answer, acknowledge; and claim what dead
    workers left behind."""

    def __init__(
        self,
        package: ModelPackage,
        engine: Engine,
        redis: Redis,
        settings: WorkerSettings,
        metrics: Metrics,
    ) -> None:
        self.model = package.manifest.ref
        self.engine = engine
        self.redis = redis
        self.name = settings.consumer
        self.metrics = metrics
        self.queue_metrics = metrics.group(QueueMetrics)
        self.stream = work_stream(self.model)
        self.dead_stream = dead_letter_stream(self.model)
        self.batch_size = settings.max_batch_size
        self.fill_s = settings.max_queue_delay_ms / 1000
        self.claim_ms = round(settings.claim_timeout_s * 1000)
        self.claim_every_s = settings.claim_timeout_s / 4
        self.poll_ms = max(1, round(min(self.claim_every_s, MAX_POLL_S) * 1000))
        self.max_deliveries = settings.max_deliveries
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{self.model}")
        self._has_group = False
        self._claim_cursor: bytes | str = "0-0"
        self._next_claim = 0.0
        for counter in (self.queue_metrics.claimed, self.queue_metrics.dead_letters, self.queue_metrics.expired):
            counter.labels(self.model)  # every series exists from the start, at 0

    async def run(self, stopping: asyncio.Event, health: QueueHealth) -> None:
        """Until ``stopping``: batches, one at a time. Redis faults are waited out, never fatal. The
        engine is closed at the end."""
        try:
            while not stopping.is_set():
                try:
                    await self._step()
                except RedisError as exc:
                    self._on_redis_error(exc, health)
                    await asyncio.sleep(RECONNECT_DELAY_S)
        finally:
            self._executor.shutdown(wait=True)
            self.engine.close()

    async def _step(self) -> None:
        if not self._has_group:
            await self._create_group()
        batch = await self._take()
        if batch:
            await self._process(batch)

    def _on_redis_error(self, exc: RedisError, health: QueueHealth) -> None:
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            log.warning("model %s: the consumer group is gone (Redis lost its data?): creating it again", self.model)
            self._has_group = False
        elif is_connection_error(exc):
            health.down(exc)
        else:
            log.error("model %s: Redis refused a command: %s", self.model, exc)

    async def _create_group(self) -> None:
        """The group starts at the stream's beginning, so faces queued before any worker ran count."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        self._has_group = True

    async def _take(self) -> list[Delivery]:
        """Claimed faces when a claim scan is due and finds some; else a fresh batch."""
        if time.monotonic() >= self._next_claim and (claimed := await self._claim()):
            return claimed
        batch = await self._read(self.batch_size, self.poll_ms)
        fill_until = time.monotonic() + self.fill_s
        while batch and len(batch) < self.batch_size and (left := fill_until - time.monotonic()) > 0:
            more = await self._read(self.batch_size - len(batch), max(1, round(left * 1000)))
            if not more:
                break
            batch += more
        return batch

    async def _read(self, count: int, block_ms: int) -> list[Delivery]:
        response = await self.redis.xreadgroup(GROUP, self.name, {self.stream: ">"}, count=count, block=block_ms)
        return [Delivery(entry_id, fields, 1) for _, entries in response for entry_id, fields in entries]

    async def _claim(self) -> list[Delivery]:
        """XAUTOCLAIM faces idle past the claim timeout (a dead worker's, or handed back after a
        failure), with their delivery counts. A scan that has not reached the end continues next time."""
        cursor, entries, _deleted = await self.redis.xautoclaim(
            self.stream, GROUP, self.name, self.claim_ms, self._claim_cursor, count=self.batch_size
        )
        self._claim_cursor = cursor
        scanned_all = cursor in (b"0-0", "0-0")
        self._next_claim = time.monotonic() + (self.claim_every_s if scanned_all else 0.0)
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.stream, GROUP, entry_id, entry_id, 1)
        counts = [rows[0]["times_delivered"] if rows else 1 for rows in await pipe.execute()]
        self.queue_metrics.claimed.labels(self.model).inc(len(entries))
        log.info("model %s: claimed %d idle face(s)", self.model, len(entries))
        return [Delivery(entry_id, fields, count) for (entry_id, fields), count in zip(entries, counts, strict=False)]

    async def _process(self, batch: list[Delivery]) -> None:
        outcome = _Outcome(self)
        live: list[tuple[Delivery, WorkItem]] = []
        now = time.time()
        for delivery in batch:
            try:
                item = WorkItem.decode(delivery.fields)
            except WireVersionError as exc:
                outcome.refuse_version(delivery, exc)
                continue
            except WireError as exc:
                outcome.dead_letter(delivery, f"malformed work item: {exc}")
                continue
            if item.deadline <= now:
                outcome.finish(delivery)
                self.queue_metrics.expired.labels(self.model).inc()
            elif delivery.count > self.max_deliveries:
                outcome.dead_letter(delivery, f"delivered {delivery.count} times, never answered (workers died on it)")
            else:
                live.append((delivery, item))
        if live:
            await self._infer(live, outcome)
        await outcome.send()

    async def _infer(self, live: list[tuple[Delivery, WorkItem]], outcome: _Outcome) -> None:
        started = time.time()
        loop = asyncio.get_running_loop()
        outputs, infer_s = await loop.run_in_executor(self._executor, self._run, [item.tensor for _, item in live])
        answered = 0
        for (delivery, item), output in zip(live, outputs, strict=False):
            if isinstance(output, Exception):
                self._failed(delivery, output, outcome)
                continue
            answered += 1
            queue_s = max(0.0, started - item.enqueued)
            reply = Reply(item.address.request_id, item.address.index, output, queue_s, infer_s)
            outcome.reply(delivery, item.address, reply)
        self.metrics.batch_execution_count.labels(self.model).inc()
        self.metrics.batch_size.labels(self.model).observe(len(live))
        self.metrics.inference_count.labels(self.model).inc(answered)

    def _failed(self, delivery: Delivery, error: Exception, outcome: _Outcome) -> None:
        if delivery.count >= self.max_deliveries:
            outcome.dead_letter(delivery, f"{type(error).__name__}: {error}")
        else:
            log.warning(
                "model %s: entry %s failed (delivery %d of %d), handing it back: %s",
                self.model,
                delivery.entry_id.decode(),
                delivery.count,
                self.max_deliveries,
                error,
            )
            outcome.hand_back(delivery)

    def _run(self, tensors: list[np.ndarray]) -> tuple[list[Rows | Exception], float]:
        """On the engine thread: each face's rows of every output; if the batch fails, each face
        runs alone so that only the faces that fail by themselves fail."""
        started = time.monotonic()
        try:
            outputs: list[Rows | Exception] = list(self._engine_rows(tensors))
        except Exception as exc:  # any engine failure: isolate it, never let it end the worker
            outputs = [exc] if len(tensors) == 1 else [self._run_alone(tensor) for tensor in tensors]
        return outputs, time.monotonic() - started

    def _run_alone(self, tensor: np.ndarray) -> Rows | Exception:
        try:
            return self._engine_rows([tensor])[0]
        except Exception as exc:
            return exc

    def _engine_rows(self, tensors: list[np.ndarray]) -> list[Rows]:
        return split_rows(self.engine.run(np.stack(tensors)), len(tensors))

    async def leave(self) -> None:
        """Remove this consumer from the group when it holds nothing (deleting a consumer drops its
        pending entries, so one that still holds faces stays for others to claim from)."""
        held = await self.redis.xpending_range(self.stream, GROUP, "-", "+", 1, consumername=self.name)
        if not held:
            await self.redis.xgroup_delconsumer(self.stream, GROUP, self.name)


class Worker:
    """The ``fsfm worker`` process: every model of the repository, one consumer each."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.redis = connect(settings.queue, MAX_POLL_S + COMMAND_TIMEOUT_S)
        self.models: dict[str, QueueMetrics] = {}
        self.health = QueueHealth(settings.queue, self.models)
        self.consumers: list[ModelConsumer] = []
        self.stopping: asyncio.Event | None = None

    def load(self) -> None:
        """Engines for every package of the repository, chosen and warmed up by ``load_engine`` as
        the service's are (slow: run it off the loop)."""
        repository = ModelRepository(self.settings.models)
        for folder, error in repository.errors.items():
            log.error("skipping model package %s: %s", folder, error)
        if not repository.packages:
            raise RuntimeError(f"no model packages in {self.settings.models}")
        for package in repository.packages:
            engine = load_engine(package, self.settings)
            consumer = ModelConsumer(package, engine, self.redis, self.settings, self.metrics)
            self.consumers.append(consumer)
            self.models[consumer.model] = consumer.queue_metrics
            self.metrics.model_loaded(consumer.model, engine.selection.describe() if engine.selection else None)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (1 when the models could not be loaded)."""
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        http, http_task, port = self._serve_probes()
        log.info(
            "fsfm worker %s: metrics on http://%s:%d, queue %s",
            self.settings.consumer,
            self.settings.host,
            port,
            describe(self.settings.queue),
        )
        try:
            await loop.run_in_executor(None, self.load)
        except Exception as exc:
            log.error("cannot start the worker: %s", exc)
            await _stop(http, http_task)
            return 1
        log.info("fsfm worker ready: %s", ", ".join(self.models))
        monitor = asyncio.create_task(monitor_streams(self.redis, self.health, self.models))
        try:
            await asyncio.gather(*(consumer.run(self.stopping, self.health) for consumer in self.consumers))
        finally:
            monitor.cancel()
            await _stop(http, http_task)
            await self._leave()
        log.info("fsfm worker stopped")
        return 0

    async def _leave(self) -> None:
        try:
            for consumer in self.consumers:
                await consumer.leave()
        except RedisError as exc:
            log.warning("could not leave the consumer group: %s", exc)
        await self.redis.aclose()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """The API's readiness shape (``service/readiness.py``) for this worker's models and queue."""
        stopping = self.stopping is not None and self.stopping.is_set()
        loaded = bool(self.consumers) and len(self.models) == len(self.consumers)
        backend_errors = {"queue": self.health.error} if self.health.error else {}
        details: dict[str, object] = {
            "reason": not_ready_reason(
                loaded=loaded, serving=bool(self.models), draining=stopping, backend_down=bool(backend_errors)
            ),
            "models_loaded": loaded,
            "draining": stopping,
            "models": sorted(self.models),
            "queue": "redis",
            "precision": self.settings.precision,
            "engines": {c.model: c.engine.selection.describe() for c in self.consumers if c.engine.selection},
        }
        if backend_errors:
            details["backend_errors"] = backend_errors
        return details["reason"] is None, details

    def _serve_probes(self) -> tuple[HttpServer, asyncio.Task, int]:
        """Serve /metrics, /healthz and /readyz on ``metrics_port``; returns the server, its task, the port."""
        sock = listen(self.settings.host, self.settings.metrics_port)
        config = uvicorn.Config(create_probe_app(self), lifespan="off", log_config=None, server_header=False)
        server = HttpServer(config)
        return server, asyncio.create_task(server.serve(sockets=[sock]), name="probes"), sock.getsockname()[1]


async def _stop(server: HttpServer, task: asyncio.Task) -> None:
    server.should_exit = True
    await task


def run_worker(settings: WorkerSettings) -> int:
    return asyncio.run(Worker(settings).serve())
