"""The Redis Streams queue between API nodes and ``fsfm worker`` processes (docs/scaling.md).

Keys, per model ``name:version`` and per API node process:

  fsfm:queue:<model>   the work stream, read by the consumer group ``workers``; one entry per face
  fsfm:dead:<model>    the dead-letter stream: faces that failed ``max_deliveries`` times, with the error
  fsfm:reply:<node>    an API node's reply stream: workers XADD each face's result to it

A work entry carries everything a worker on another machine needs: the face crop as raw little-endian
float32 bytes with its shape and dtype, the request id and the face's index in the request, the model
ref, the absolute deadline and the enqueue time as wall-clock epoch seconds (monotonic clocks are per
machine), and the reply stream of the API node that waits. Workers acknowledge an entry and delete it
once answered, so a stream holds only faces that are waiting or in work; XADD's approximate MAXLEN is a
backstop far above the admission limit.

Wire format, version 2 (``WIRE_VERSION``). Every entry is a flat map of fields, numbers as text:

  work item  v=2, reply, id, i (the face's index in the request), model, deadline, t (enqueued), and
             the face crop (3, S, S) as data (raw little-endian float32 bytes), shape ("3,224,224"),
             dtype ("float32")
  answer     v=2, id, i, queue_s, infer_s, outputs (the output names, comma-separated) and, per
             output NAME, the face's row of it: out:NAME:data, out:NAME:shape, out:NAME:dtype
  error      v=2, id, i, reason (a stable code), message

Version 1 (one output, no ``v``) had the same error form, so API nodes of either version read the
errors of both. Neither side misreads the other's other entries: an API node fails a request whose
answer comes in another version with reason ``wire_version_mismatch`` (the workers need upgrading),
and a worker answers a work item of another version with that error without computing it.

The API node side is ``RedisInferenceClient`` (one per model; ``AnalysisCore`` uses it as the model's
backend when ``FSFM_QUEUE`` is a redis:// URL). All clients of one process and Redis URL share an
``_ApiNode``: the connections, the reply stream and the one task that reads it, and the connection's
health. The worker side is ``service.worker``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fsfm.package.manifest import Manifest
from service.batcher import InferenceResult, Rows, stack_rows
from service.errors import AnalysisError, DeadlineExceeded, InferenceFailed, Overloaded, Unavailable
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("fsfm.queue")

GROUP = "workers"
COMMAND_TIMEOUT_S = 2.0  # one Redis command; a slow or partitioned Redis fails requests, never hangs them
CONNECT_TIMEOUT_S = 1.0
# An API node's commands (enqueue, withdrawal, health probe) answer clients that wait: a frozen or
# unreachable Redis must give them a 503, and /readyz must say so, within 1 s; so a command gets
# this long, is not retried after a timeout, and the probe runs every ``API_MONITOR_INTERVAL_S``.
API_COMMAND_TIMEOUT_S = 0.5
API_MONITOR_INTERVAL_S = 0.25
MAX_CONNECTIONS = 32  # per client; pipelining makes each request's use of one brief
REPLY_BLOCK_MS = 1000  # how long the reply listener's XREAD waits before asking again
REPLY_MAXLEN = 10_000  # replies kept per API node stream (read at once; this only bounds a dead node's)
REPLY_TTL_S = 300  # a dead API node's reply stream disappears this long after its last reply
DEAD_LETTER_MAXLEN = 10_000
MONITOR_INTERVAL_S = 0.5  # queue gauges and the health probe; also how soon a recovered Redis is noticed
RECONNECT_DELAY_S = 0.2


def work_stream(model: str) -> str:
    return f"fsfm:queue:{model}"


def dead_letter_stream(model: str) -> str:
    return f"fsfm:dead:{model}"


def reply_stream(node: str) -> str:
    return f"fsfm:reply:{node}"


def stream_maxlen(max_queue_size: int) -> int:
    """The hard cap on a work stream's length. Admission (``max_queue_size``) keeps streams far below
    it; it only bites if many API nodes race past the limit at once, and then drops the oldest faces
    (whose requests time out) rather than letting Redis memory grow."""
    return max(10 * max_queue_size, 1000)


def connect(url: str, timeout_s: float = COMMAND_TIMEOUT_S, retry_timeouts: bool = True) -> Redis:
    """A client that fails fast: bounded timeouts, and one immediate retry (a pooled connection that
    died with a restarted Redis is replaced, not reported; with ``retry_timeouts=False`` a command
    that timed out is not tried again). Concurrent requests share at most ``MAX_CONNECTIONS``
    connections, waiting for a free one no longer than a command or a connection may take."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=min(timeout_s, COMMAND_TIMEOUT_S),
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, CONNECT_TIMEOUT_S),
        retry=Retry(
            NoBackoff(), 1, (RedisConnectionError, RedisTimeoutError) if retry_timeouts else (RedisConnectionError,)
        ),
    )
    return Redis.from_pool(pool)


def describe(url: str) -> str:
    """The URL without credentials, for messages and /readyz."""
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else ""  # unix:// has none
    return f"{parts.scheme}://{address}{parts.path}"


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError))


def node_name() -> str:
    """Unique per process: host, pid and a random suffix (containers often all run as pid 1)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# ---- wire format ---------------------------------------------------------------------------------


class WireError(ValueError):
    """A stream entry that is not a well-formed work item or reply."""


def _text(fields: Mapping[bytes, bytes], name: str) -> str:
    try:
        return fields[name.encode()].decode()
    except (KeyError, UnicodeDecodeError):
        raise WireError(f"missing or undecodable field {name!r}") from None


def _number(fields: Mapping[bytes, bytes], name: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(_text(fields, name))
    except ValueError:
        raise WireError(f"field {name!r} is not a {kind.__name__}") from None


WIRE_VERSION = "2"
VERSION_MISMATCH = "wire_version_mismatch"


class WireVersionError(WireError):
    """An entry written in another version of the wire format."""

    def __init__(self, version: bytes | None) -> None:
        self.version = "1 (unversioned)" if version is None else version.decode(errors="replace")
        super().__init__(f"wire format version {self.version}; this side speaks version {WIRE_VERSION}")


def check_version(fields: Mapping[bytes, bytes]) -> None:
    version = fields.get(b"v")
    if version != WIRE_VERSION.encode():
        raise WireVersionError(version)


def encode_array(array: np.ndarray, prefix: str = "") -> dict[str, bytes | str]:
    """``{data, shape, dtype}`` fields: raw little-endian float32 bytes, shape as "3,64,64"."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return {
        f"{prefix}data": array.tobytes(),
        f"{prefix}shape": ",".join(map(str, array.shape)),
        f"{prefix}dtype": "float32",
    }


def decode_array(fields: Mapping[bytes, bytes], prefix: str = "") -> np.ndarray:
    dtype = _text(fields, f"{prefix}dtype")
    if dtype != "float32":
        raise WireError(f"unsupported dtype {dtype!r}; the queue carries float32")
    text = _text(fields, f"{prefix}shape")
    try:
        shape = tuple(int(side) for side in text.split(",")) if text else ()
    except ValueError:
        raise WireError("malformed shape") from None
    data = fields.get(f"{prefix}data".encode(), b"")
    if any(side < 0 for side in shape) or len(data) != 4 * int(np.prod(shape)):
        raise WireError(f"{len(data)} data bytes do not hold a float32 array of shape {shape}")
    return np.frombuffer(data, "<f4").reshape(shape)


@dataclass
class Address:
    """Where a face's answer goes: the API node's reply stream, the request and the face's index."""

    reply_to: str
    request_id: str
    index: int

    def encode(self) -> dict[str, str]:
        return {"reply": self.reply_to, "id": self.request_id, "i": str(self.index)}

    @classmethod
    def decode(cls, fields: Mapping[bytes, bytes]) -> Address:
        return cls(_text(fields, "reply"), _text(fields, "id"), int(_number(fields, "i", int)))


@dataclass
class WorkItem:
    """One face to infer, as an entry of the model's work stream."""

    address: Address
    model: str
    deadline: float  # wall-clock epoch seconds
    enqueued: float  # wall-clock epoch seconds
    tensor: np.ndarray  # (3, S, S) float32

    def encode(self) -> dict[str, bytes | str]:
        return {
            "v": WIRE_VERSION,
            **self.address.encode(),
            "model": self.model,
            "deadline": repr(self.deadline),
            "t": repr(self.enqueued),
            **encode_array(self.tensor),
        }

    @classmethod
    def decode(cls, fields: Mapping[bytes, bytes]) -> WorkItem:
        """Raises ``WireError`` for a malformed item, ``WireVersionError`` for an addressed item of
        another version (it can be answered, with that error)."""
        address = Address.decode(fields)
        check_version(fields)
        return cls(
            address=address,
            model=_text(fields, "model"),
            deadline=float(_number(fields, "deadline", float)),
            enqueued=float(_number(fields, "t", float)),
            tensor=decode_array(fields),
        )


def _output_prefix(name: str) -> str:
    return f"out:{name}:"


@dataclass
class Reply:
    """One face's answer: its row of every named output and timings, or an error (reason and message)."""

    request_id: str
    index: int
    outputs: dict[str, np.ndarray] | None = None
    queue_s: float = 0.0
    infer_s: float = 0.0
    reason: str | None = None
    message: str = ""

    def encode(self) -> dict[str, bytes | str]:
        fields: dict[str, bytes | str] = {"v": WIRE_VERSION, "id": self.request_id, "i": str(self.index)}
        if self.outputs is None:
            return {**fields, "reason": self.reason or "inference_failed", "message": self.message}
        if bad := [name for name in self.outputs if "," in name or not name]:
            raise WireError(f"output names {bad} cannot travel: names are comma-separated")
        fields |= {"queue_s": repr(self.queue_s), "infer_s": repr(self.infer_s), "outputs": ",".join(self.outputs)}
        for name, row in self.outputs.items():
            fields |= encode_array(row, _output_prefix(name))
        return fields

    @classmethod
    def decode(cls, fields: Mapping[bytes, bytes]) -> Reply:
        """An answer of another version decodes as a ``wire_version_mismatch`` error for its request."""
        request_id, index = _text(fields, "id"), int(_number(fields, "i", int))
        try:
            check_version(fields)
        except WireVersionError as exc:
            message = f"a worker answered in {exc}: upgrade the workers to this API node's fsfm version"
            return cls(request_id, index, reason=VERSION_MISMATCH, message=message)
        if b"reason" in fields:
            return cls(request_id, index, reason=_text(fields, "reason"), message=_text(fields, "message"))
        names = _text(fields, "outputs").split(",")
        return cls(
            request_id,
            index,
            outputs={name: decode_array(fields, _output_prefix(name)) for name in names},
            queue_s=float(_number(fields, "queue_s", float)),
            infer_s=float(_number(fields, "infer_s", float)),
        )


# ---- metrics and monitoring (shared by API nodes and workers) -------------------------------------


class QueueMetrics:
    """The queue's Prometheus series, in the registry of a service's ``Metrics``. The gauges are what
    an autoscaler acts on; API nodes and workers both export them (the same value per model)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.up = Gauge("fsfm_queue_up", "1 while Redis answers, 0 while it is unreachable.", registry=r)
        self.depth = Gauge(
            "fsfm_queue_depth", "Faces in the model's stream not yet taken by a worker.", ["model"], registry=r
        )
        self.pending = Gauge(
            "fsfm_queue_pending",
            "Faces taken by a worker and not yet acknowledged: in work, or held by a dead worker until claimed.",
            ["model"],
            registry=r,
        )
        self.claimed = Counter(
            "fsfm_queue_claimed",
            "Faces a worker took over after the claim timeout (a dead worker's, or handed back after a failure).",
            ["model"],
            registry=r,
        )
        self.dead_letters = Counter(
            "fsfm_queue_dead_letters", "Faces moved to the dead-letter stream.", ["model"], registry=r
        )
        self.expired = Counter(
            "fsfm_queue_expired",
            "Faces dropped by a worker, not computed, because their deadline had passed.",
            ["model"],
            registry=r,
        )


@dataclass
class StreamStats:
    depth: int  # not yet delivered to a worker
    pending: int  # delivered, not yet acknowledged


async def read_stream_stats(redis: Redis, models: Iterable[str]) -> dict[str, StreamStats]:
    """Depth and pending faces of each model's work stream, in one round trip. Answered entries are
    deleted, so the stream's length is what waits plus what is pending."""
    models = list(models)
    pipe = redis.pipeline(transaction=False)
    for model in models:
        pipe.xlen(work_stream(model))
        pipe.xpending(work_stream(model), GROUP)
    results = await pipe.execute(raise_on_error=False)  # a lost connection still raises
    stats = {}
    for model, length, summary in zip(models, results[0::2], results[1::2], strict=False):
        length = length if isinstance(length, int) else 0
        pending = summary["pending"] if isinstance(summary, dict) else 0  # no group yet: nothing pending
        stats[model] = StreamStats(depth=max(0, length - pending), pending=pending)
    return stats


class QueueHealth:
    """Whether Redis answers, as the last command or probe found it; ``error`` says why not. ``models``
    maps each served model to the metrics whose ``fsfm_queue_up`` gauge follows this state."""

    def __init__(self, url: str, models: Mapping[str, QueueMetrics]) -> None:
        self.url = url
        self.error: str | None = None
        self._models = models

    def down(self, exc: BaseException) -> str:
        if self.error is None:
            log.warning("Redis at %s is unreachable: %s", describe(self.url), exc)
        self.error = f"Redis at {describe(self.url)} is unreachable: {exc}"
        self._set_up(0)
        return self.error

    def up(self) -> None:
        if self.error is not None:
            log.info("Redis at %s answers again", describe(self.url))
        self.error = None
        self._set_up(1)

    def _set_up(self, value: int) -> None:
        for metrics in set(self._models.values()):
            metrics.up.set(value)


async def monitor_streams(
    redis: Redis,
    health: QueueHealth,
    models: Mapping[str, QueueMetrics],
    interval_s: float = MONITOR_INTERVAL_S,
    on_down: Callable[[str], None] | None = None,
) -> None:
    """Forever: probe Redis, publish each model's depth and pending faces, keep ``health`` current;
    ``on_down`` gets the error of each failed probe."""
    while True:
        try:
            stats = await read_stream_stats(redis, models)
        except RedisError as exc:
            error = health.down(exc)
            if on_down is not None:
                on_down(error)
        else:
            health.up()
            for model, stat in stats.items():
                models[model].depth.labels(model).set(stat.depth)
                models[model].pending.labels(model).set(stat.pending)
        await asyncio.sleep(interval_s)


# ---- the API node side ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiting:
    """One request's faces in flight: the answers so far and the future the request awaits."""

    future: asyncio.Future[InferenceResult]
    missing: set[int]  # the indices of the faces not yet answered
    rows: dict[int, Rows] = field(default_factory=dict)
    queue_s: float = 0.0
    infer_s: float = 0.0

    def deliver(self, reply: Reply) -> None:
        if self.future.done():
            return
        if reply.outputs is None:
            self.future.set_exception(InferenceFailed(reply.reason or "inference_failed", reply.message))
            return
        if reply.index in self.missing:  # a face answered twice (claimed from a slow worker) counts once
            self.rows[reply.index] = reply.outputs
            self.missing.discard(reply.index)
            self.queue_s, self.infer_s = max(self.queue_s, reply.queue_s), max(self.infer_s, reply.infer_s)
        if self.missing:
            return
        rows = [self.rows[i] for i in sorted(self.rows)]
        if any(row.keys() != rows[0].keys() for row in rows):
            names = sorted({tuple(row) for row in rows})
            error = InferenceFailed("inference_failed", f"workers answered with other outputs: {names}")
            self.future.set_exception(error)
            return
        self.future.set_result(InferenceResult(stack_rows(rows), self.queue_s, self.infer_s))

    def fail(self, error: AnalysisError) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def close(self) -> None:
        """End the wait: cancel the future, or mark its outcome seen (a request that failed before
        awaiting it must not log "exception was never retrieved")."""
        if not self.future.done():
            self.future.cancel()
        elif not self.future.cancelled():
            self.future.exception()


class _ApiNode:
    """What the clients of one API node process share for one Redis URL: the connections, the node's
    reply stream and its one listener task, the requests waiting for replies, and Redis's health."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reply_stream = reply_stream(node_name())
        self.redis = connect(url, API_COMMAND_TIMEOUT_S, retry_timeouts=False)
        self._listener_redis = connect(url, REPLY_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S)
        self.models: dict[str, QueueMetrics] = {}  # the monitored streams, and whose gauges they feed
        self.health = QueueHealth(url, self.models)
        self.waiting: dict[str, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients = 0

    def attach(self, model: str, metrics: QueueMetrics) -> None:
        if not self._clients:
            self._spawn(self._listen())
            self._spawn(monitor_streams(self.redis, self.health, self.models, API_MONITOR_INTERVAL_S, self._down))
        self._clients += 1
        self.models[model] = metrics

    async def detach(self, model: str) -> bool:
        """Forget ``model``; the last client to leave stops the tasks and closes. True when closed."""
        self.models.pop(model, None)
        self._clients -= 1
        if self._clients:
            return False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.fail_all(Unavailable("shutting_down", "the service is shutting down"))
        try:
            await self.redis.delete(self.reply_stream)
        except RedisError:
            pass  # Redis is down: the stream's TTL removes it
        await asyncio.gather(self.redis.aclose(), self._listener_redis.aclose())
        return True

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def failure(self, exc: RedisError) -> Unavailable:
        """The error a request gets for ``exc``; a lost connection also marks Redis down and fails
        every request in flight (their replies may never come)."""
        if not is_connection_error(exc):
            return Unavailable("queue_error", f"Redis at {describe(self.url)}: {exc}")
        error = Unavailable("queue_unreachable", self.health.down(exc))
        self.fail_all(error)
        return error

    def _down(self, error: str) -> None:
        """The health probe failed: the requests in flight would wait for replies that cannot come."""
        self.fail_all(Unavailable("queue_unreachable", error))

    def fail_all(self, error: AnalysisError) -> None:
        for waiting in self.waiting.values():
            waiting.fail(error)

    def withdraw(self, stream: str, entry_ids: list[bytes]) -> None:
        """Delete faces no one waits for any more, in the background, so workers never compute them
        (an entry already taken is computed and its reply ignored)."""
        self._spawn(self._delete_entries(stream, entry_ids))

    async def _delete_entries(self, stream: str, entry_ids: list[bytes]) -> None:
        try:
            await self.redis.xdel(stream, *entry_ids)
        except RedisError as exc:
            log.debug("could not withdraw %d faces from %s: %s", len(entry_ids), stream, exc)

    async def _listen(self) -> None:
        last_id: bytes | str = "0-0"
        while True:
            try:
                response = await self._listener_redis.xread(
                    {self.reply_stream: last_id}, count=1024, block=REPLY_BLOCK_MS
                )
            except RedisError as exc:
                self.failure(exc)
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            for _stream, entries in response:
                for entry_id, fields in entries:
                    last_id = entry_id
                    self._deliver(fields)

    def _deliver(self, fields: Mapping[bytes, bytes]) -> None:
        try:
            reply = Reply.decode(fields)
        except WireError as exc:
            log.error("dropping a malformed reply on %s: %s", self.reply_stream, exc)
            return
        waiting = self.waiting.get(reply.request_id)
        if waiting is not None:  # else the request already ended (deadline, cancellation, error)
            waiting.deliver(reply)


_NODES: dict[tuple[asyncio.AbstractEventLoop, str], _ApiNode] = {}  # one per event loop and Redis URL


class RedisInferenceClient:
    """The API node's inference backend for one model when ``FSFM_QUEUE`` is a redis:// URL: faces
    go to the model's work stream, answers come back on the node's reply stream."""

    def __init__(self, manifest: Manifest, settings: Settings, metrics: Metrics) -> None:
        self.model = manifest.ref
        self.stream = work_stream(self.model)
        self.url = settings.queue
        self.max_queue_size = settings.max_queue_size
        self.maxlen = stream_maxlen(settings.max_queue_size)
        self.request_timeout_s = settings.request_timeout_s
        self.metrics = metrics
        self.queue_metrics = metrics.group(QueueMetrics)
        self._node: _ApiNode | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Faces this node has queued and waits for."""
        return self._pending

    def start(self) -> None:
        if self._node is None:
            key = (asyncio.get_running_loop(), self.url)
            if key not in _NODES:
                _NODES[key] = _ApiNode(self.url)
            self._node = _NODES[key]
            self._node.attach(self.model, self.queue_metrics)

    async def stop(self) -> None:
        if self._node is not None:
            node, self._node = self._node, None
            if await node.detach(self.model):
                _NODES.pop((asyncio.get_running_loop(), self.url), None)

    def health_error(self) -> str | None:
        if self._node is None:
            return "the queue client is not running"
        return self._node.health.error

    async def infer(self, tensors: np.ndarray, deadline: float | None = None) -> InferenceResult:
        """Queue ``tensors`` (n, 3, S, S) and wait for the workers' answers, until ``deadline`` (a
        ``time.monotonic()`` instant; default: the request timeout)."""
        node = self._node
        if node is None:
            raise Unavailable("not_ready", f"model {self.model} is not running")
        if node.health.error is not None:
            raise Unavailable("queue_unreachable", node.health.error)
        n = len(tensors)
        if n == 0:
            return InferenceResult({}, 0.0, 0.0)
        timeout = self.request_timeout_s if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            raise DeadlineExceeded()
        request_id = uuid.uuid4().hex
        now = time.time()
        items = [
            WorkItem(Address(node.reply_stream, request_id, i), self.model, now + timeout, now, tensor)
            for i, tensor in enumerate(tensors)
        ]
        waiting = _Waiting(asyncio.get_running_loop().create_future(), set(range(n)))
        node.waiting[request_id] = waiting
        self._count_pending(n)
        entry_ids: list[bytes] = []
        try:
            entry_ids = await self._enqueue(node, items)
            return await asyncio.wait_for(waiting.future, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise DeadlineExceeded() from None
        finally:
            del node.waiting[request_id]
            waiting.close()
            self._count_pending(-n)
            if waiting.missing and entry_ids:  # ended early (deadline, cancellation, error)
                node.withdraw(self.stream, entry_ids)

    async def _enqueue(self, node: _ApiNode, items: list[WorkItem]) -> list[bytes]:
        """XADD every face in one round trip, with the stream's length before them for admission."""
        pipe = node.redis.pipeline(transaction=False)
        pipe.xlen(self.stream)
        for item in items:
            pipe.xadd(self.stream, item.encode(), maxlen=self.maxlen, approximate=True)
        try:
            depth, *entry_ids = await pipe.execute()
        except RedisError as exc:
            raise node.failure(exc) from None
        if depth + len(items) > self.max_queue_size:
            node.withdraw(self.stream, entry_ids)
            raise Overloaded(f"model {self.model}: {depth} faces queued, limit {self.max_queue_size}")
        return entry_ids

    def _count_pending(self, change: int) -> None:
        self._pending += change
        self.metrics.pending.labels(self.model).set(self._pending)
