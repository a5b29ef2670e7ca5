"""The Redis queue's parts against a real Redis: the wire format and its version, named outputs
(through the batcher too, and through a real worker process), claiming a dead worker's faces,
dead-lettering, expiry, admission and the stream bounds, and Redis going away under a request.

API-node clients and worker consumers run in this process over the shared Redis on 127.0.0.1:6379,
each test on streams of its own (a model name no one else uses); the outage test stops a
``redis-server`` of its own. The real-process scenarios are in ``test_scale.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.package import ModelPackage
from fsfm_cli import app
from service.batcher import DynamicBatcher
from service.engines import load_engine
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, Unavailable
from service.metrics import Metrics
from service.redis_queue import (
    COMMAND_TIMEOUT_S,
    GROUP,
    VERSION_MISMATCH,
    Address,
    QueueHealth,
    RedisInferenceClient,
    Reply,
    WireError,
    WorkItem,
    connect,
    dead_letter_stream,
    decode_array,
    encode_array,
    stream_maxlen,
    work_stream,
)
from service.settings import Settings
from service.worker import MAX_POLL_S, ModelConsumer, WorkerSettings
from tests.packages import make_tiny_package, make_two_output_package
from tests.queue_processes import running_redis, running_worker

SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ModelPackage:
    return make_tiny_package(tmp_path_factory.mktemp("models"))


@pytest.fixture
def model(tiny: ModelPackage) -> ModelPackage:
    """The tiny package under a model name of this test's own, so its streams are its own."""
    package = ModelPackage(tiny.manifest.model_copy(update={"name": f"queue-test-{uuid.uuid4().hex[:8]}"}), tiny.path)
    yield package
    with redis.Redis.from_url(SHARED) as r:
        r.delete(work_stream(package.manifest.ref), dead_letter_stream(package.manifest.ref))


def faces(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def sample(metrics: Metrics, name: str, model: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": model}) or 0.0


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def api_client(
    package: ModelPackage, url: str = SHARED, **settings: object
) -> AsyncIterator[RedisInferenceClient]:
    client = RedisInferenceClient(package.manifest, Settings(queue=url, **settings), Metrics())
    client.start()
    try:
        yield client
    finally:
        await client.stop()


@asynccontextmanager
async def live_consumer(package: ModelPackage, url: str = SHARED, **settings: object) -> AsyncIterator[ModelConsumer]:
    """A worker's consumer of ``package``, running in this process until the block ends."""
    worker_settings = WorkerSettings(queue=url, consumer=f"live-{uuid.uuid4().hex[:6]}", **settings)
    connection = connect(url, MAX_POLL_S + COMMAND_TIMEOUT_S)
    consumer = ModelConsumer(package, load_engine(package, worker_settings), connection, worker_settings, Metrics())
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping, QueueHealth(url, {})))
    try:
        yield consumer
    finally:
        stopping.set()
        await task
        await connection.aclose()


async def length_is(connection, stream: str, n: int) -> bool:
    return await connection.xlen(stream) == n


async def take(connection, stream: str, consumer: str, n: int) -> list[bytes]:
    """Read ``n`` entries as ``consumer`` (a worker that will die holding them)."""
    taken: list[bytes] = []
    while len(taken) < n:
        response = await connection.xreadgroup(GROUP, consumer, {stream: ">"}, count=n - len(taken), block=100)
        taken += [entry_id for _, entries in response for entry_id, _ in entries]
    return taken


# ---- wire format ----------------------------------------------------------------------------------


def test_work_items_and_replies_round_trip_through_redis() -> None:
    stream = f"fsfm:test:{uuid.uuid4().hex}"
    tensor = faces(1)[0]
    item = WorkItem(Address("fsfm:reply:node-1", "req-1", 3), "tiny:1", 1_800_000_000.25, 1_799_999_990.5, tensor)
    answer = Reply("req-1", 3, {"logits": np.array([0.25, -1.5], np.float32)}, queue_s=0.01, infer_s=0.02)
    failure = Reply("req-1", 4, reason="inference_failed", message="went to the dead-letter stream")
    with redis.Redis.from_url(SHARED) as r:
        for fields in (item.encode(), answer.encode(), failure.encode()):
            r.xadd(stream, fields)
        (_, item_fields), (_, answer_fields), (_, failure_fields) = r.xrange(stream)
        r.delete(stream)
    decoded = WorkItem.decode(item_fields)
    assert decoded.address == item.address and decoded.model == "tiny:1"
    assert (decoded.deadline, decoded.enqueued) == (item.deadline, item.enqueued)
    assert decoded.tensor.shape == (3, 64, 64) and np.array_equal(decoded.tensor, tensor)
    got = Reply.decode(answer_fields)
    assert (got.request_id, got.index, got.queue_s, got.infer_s, got.reason) == ("req-1", 3, 0.01, 0.02, None)
    assert np.array_equal(got.outputs["logits"], answer.outputs["logits"])
    assert Reply.decode(failure_fields) == failure


@pytest.mark.parametrize(
    "change",
    [
        {b"data": b"\0" * 12},  # too few bytes for the shape
        {b"dtype": b"float64"},
        {b"shape": b"3,x,64"},
        {b"deadline": b"soon"},
    ],
)
def test_malformed_work_items_are_refused(change: dict[bytes, bytes]) -> None:
    fields = {
        k.encode(): v if isinstance(v, bytes) else v.encode()
        for k, v in WorkItem(Address("r", "id", 0), "m:1", 1.0, 1.0, faces(1)[0]).encode().items()
    }
    with pytest.raises(WireError):
        WorkItem.decode({**fields, **change})
    with pytest.raises(WireError):
        decode_array({})


def v1_fields(fields: dict[str, bytes | str]) -> dict[str, bytes | str]:
    """An entry as version 1 wrote it: no ``v``."""
    return {k: v for k, v in fields.items() if k != "v"}


def test_an_answer_in_another_wire_version_fails_its_request(model: ModelPackage) -> None:
    """An old worker (wire v1: no version, one output as data/shape/dtype) answers a face: the
    request fails with wire_version_mismatch, saying to upgrade the workers."""
    stream = work_stream(model.manifest.ref)

    async def scenario() -> None:
        r = connect(SHARED)
        async with api_client(model) as client:
            request = asyncio.create_task(client.infer(faces(1)))
            await eventually(lambda: length_is(r, stream, 1))
            ((_, fields),) = await r.xrange(stream)
            address = Address.decode(fields)
            old_answer = {
                "id": address.request_id,
                "i": str(address.index),
                "queue_s": "0.0",
                "infer_s": "0.0",
                **encode_array(np.zeros(2, np.float32)),
            }
            await r.xadd(address.reply_to, old_answer)
            with pytest.raises(InferenceFailed, match="upgrade the workers") as failure:
                await asyncio.wait_for(request, 5)
            assert failure.value.reason == VERSION_MISMATCH
        await r.aclose()

    asyncio.run(scenario())


def test_a_worker_answers_work_in_another_wire_version_with_the_error_uncomputed(model: ModelPackage) -> None:
    """An old API node's work item (no version): the worker replies with the error in the form
    every version reads (reason, message), computes nothing and removes the entry."""
    ref, stream = model.manifest.ref, work_stream(model.manifest.ref)
    replies = f"fsfm:reply:test-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        r = connect(SHARED)
        now = time.time()
        await r.xadd(stream, v1_fields(WorkItem(Address(replies, "old", 0), ref, now + 30, now, faces(1)[0]).encode()))
        async with live_consumer(model) as consumer:
            await eventually(lambda: length_is(r, stream, 0))
        ((_, answer),) = await r.xrange(replies)
        assert answer[b"reason"] == VERSION_MISMATCH.encode() and b"version 1" in answer[b"message"]
        assert (answer[b"id"], answer[b"i"]) == (b"old", b"0")
        assert sample(consumer.metrics, "fsfm_inference_count_total", ref) == 0
        assert await r.xlen(dead_letter_stream(ref)) == 0
        await r.delete(replies)
        await r.aclose()

    asyncio.run(scenario())


# ---- named outputs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory) -> ModelPackage:
    """A package whose graph answers ``logits`` (B, 2) and ``features`` (B, 32), under a name of its own."""
    return make_two_output_package(tmp_path_factory.mktemp("models"), name=f"two-outputs-{uuid.uuid4().hex[:8]}")


def test_the_batcher_carries_every_named_output(two_outputs: ModelPackage) -> None:
    batch = faces(5, seed=3)
    expected = OnnxRuntimeEngine(two_outputs.onnx_path).run(batch)

    async def scenario() -> list:
        batcher = DynamicBatcher(
            load_engine(two_outputs, Settings()),
            two_outputs.manifest.ref,
            Metrics(),
            max_batch_size=4,
            max_queue_delay_ms=20,
        )
        batcher.start()
        try:  # two requests share batches: each gets its own rows back
            return await asyncio.gather(batcher.infer(batch[:2]), batcher.infer(batch[2:]))
        finally:
            await batcher.stop()

    first, second = asyncio.run(scenario())
    for name, shape in (("logits", (5, 2)), ("features", (5, 32))):
        got = np.concatenate([first.outputs[name], second.outputs[name]])
        assert got.shape == shape
        np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6)


def test_a_worker_process_answers_every_named_output(two_outputs: ModelPackage) -> None:
    batch = faces(3, seed=4)
    expected = OnnxRuntimeEngine(two_outputs.onnx_path).run(batch)

    async def scenario():
        async with api_client(two_outputs) as client:
            return await asyncio.wait_for(client.infer(batch), 30)

    try:
        with running_worker(two_outputs.path.parent.parent, SHARED, f"two-{uuid.uuid4().hex[:6]}"):
            result = asyncio.run(scenario())
    finally:
        with redis.Redis.from_url(SHARED) as r:
            r.delete(work_stream(two_outputs.manifest.ref))
    assert set(result.outputs) == {"logits", "features"}
    for name in ("logits", "features"):
        np.testing.assert_allclose(result.outputs[name], expected[name], rtol=1e-5, atol=1e-6)


# ---- the worker's rules ---------------------------------------------------------------------------


def test_a_dead_workers_faces_are_claimed_answered_and_removed(model: ModelPackage) -> None:
    ref, stream, batch = model.manifest.ref, work_stream(model.manifest.ref), faces(5, seed=1)

    async def scenario() -> None:
        dead = connect(SHARED)
        await dead.xgroup_create(stream, GROUP, id="0", mkstream=True)
        async with api_client(model) as client:
            request = asyncio.create_task(client.infer(batch))
            await take(dead, stream, "dead-worker", len(batch))
            started = time.monotonic()
            async with live_consumer(model, claim_timeout_s=0.3) as consumer:
                result = await asyncio.wait_for(request, 10)
            waited = time.monotonic() - started
        expected = OnnxRuntimeEngine(model.onnx_path).run(batch)["logits"]
        np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-5, atol=1e-6)
        assert waited >= 0.3  # only once they had been idle for the claim timeout
        assert sample(consumer.metrics, "fsfm_queue_claimed_total", ref) == len(batch)
        assert await dead.xlen(stream) == 0  # answered entries are acknowledged and deleted
        assert (await dead.xpending(stream, GROUP))["pending"] == 0
        await dead.aclose()

    asyncio.run(scenario())


def test_a_face_its_workers_keep_dying_on_is_dead_lettered_unrun(model: ModelPackage) -> None:
    """Delivered max_deliveries times and never answered (each worker that took it died): the next
    claim moves it to the dead-letter stream without running it, and its request gets the error."""
    ref, stream = model.manifest.ref, work_stream(model.manifest.ref)

    async def scenario() -> None:
        dead = connect(SHARED)
        await dead.xgroup_create(stream, GROUP, id="0", mkstream=True)
        async with api_client(model) as client:
            request = asyncio.create_task(client.infer(faces(1)))
            (entry_id,) = await take(dead, stream, "dead-1", 1)
            await dead.xclaim(stream, GROUP, "dead-2", 0, [entry_id])  # a second worker died on it
            async with live_consumer(model, claim_timeout_s=0.2, max_deliveries=2) as consumer:
                with pytest.raises(InferenceFailed, match="delivered 3 times, never answered"):
                    await asyncio.wait_for(request, 10)
        ((_, letter),) = await dead.xrange(dead_letter_stream(ref))
        assert letter[b"deliveries"] == b"3" and letter[b"entry"] == entry_id
        assert sample(consumer.metrics, "fsfm_inference_count_total", ref) == 0
        assert sample(consumer.metrics, "fsfm_queue_dead_letters_total", ref) == 1
        assert await dead.xlen(stream) == 0
        await dead.aclose()

    asyncio.run(scenario())


def test_expired_and_malformed_items_are_not_computed(model: ModelPackage) -> None:
    """A face past its deadline is dropped silently; a malformed one is dead-lettered at once (no
    delivery can fix it) and its request, when it names one, told; a good one beside them is answered."""
    ref, stream = model.manifest.ref, work_stream(model.manifest.ref)
    replies = f"fsfm:reply:test-{uuid.uuid4().hex[:8]}"
    now = time.time()

    def item(request_id: str, deadline: float) -> dict:
        return WorkItem(Address(replies, request_id, 0), ref, deadline, now, faces(1)[0]).encode()

    async def scenario() -> None:
        r = connect(SHARED)
        await r.xadd(stream, item("expired", now - 1))
        await r.xadd(stream, {**item("malformed", now + 30), "data": b"short"})
        await r.xadd(stream, {"no": "address"})
        await r.xadd(stream, item("good", now + 30))
        async with live_consumer(model) as consumer:
            await eventually(lambda: length_is(r, stream, 0))
        answers = {Reply.decode(fields).request_id: Reply.decode(fields) for _, fields in await r.xrange(replies)}
        assert set(answers) == {"malformed", "good"}
        assert answers["good"].outputs is not None and "malformed work item" in answers["malformed"].message
        assert await r.xlen(dead_letter_stream(ref)) == 2
        assert sample(consumer.metrics, "fsfm_queue_expired_total", ref) == 1
        assert sample(consumer.metrics, "fsfm_inference_count_total", ref) == 1
        await r.delete(replies)
        await r.aclose()

    asyncio.run(scenario())


# ---- the API node's rules -------------------------------------------------------------------------


def test_admission_withdrawal_and_the_stream_cap(model: ModelPackage) -> None:
    """No worker runs: faces stay queued. Past max_queue_size a request is refused at once and its
    faces leave again; a cancelled or timed-out request takes its faces back; a stream pushed past
    its cap (by other nodes racing) is trimmed back by the next XADD."""
    stream = work_stream(model.manifest.ref)

    async def scenario() -> None:
        r = connect(SHARED)
        async with api_client(model, max_queue_size=4) as client:
            waiting = asyncio.create_task(client.infer(faces(3)))
            await eventually(lambda: length_is(r, stream, 3))
            with pytest.raises(Overloaded):
                await client.infer(faces(2))
            await eventually(lambda: length_is(r, stream, 3))
            waiting.cancel()
            await eventually(lambda: length_is(r, stream, 0))
            with pytest.raises(DeadlineExceeded):
                await client.infer(faces(1), deadline=time.monotonic() + 0.2)
            await eventually(lambda: length_is(r, stream, 0))
            assert client.pending == 0

            cap = stream_maxlen(4)
            pipe = r.pipeline(transaction=False)
            for _ in range(cap + 500):
                pipe.xadd(stream, {"filler": "1"})
            await pipe.execute()
            with pytest.raises(Overloaded):
                await client.infer(faces(1))
            assert cap - 1 <= await r.xlen(stream) <= cap + 100  # approximate trimming: whole nodes of 100
        await r.aclose()

    asyncio.run(scenario())


def test_redis_dying_fails_requests_at_once_and_the_client_recovers(model: ModelPackage, tmp_path: Path) -> None:
    async def scenario(server) -> None:
        async with api_client(model, server.url) as client:
            await eventually(lambda: _healthy(client))
            in_flight = asyncio.create_task(client.infer(faces(2)))
            await asyncio.sleep(0.2)
            server.stop()
            started = time.monotonic()
            with pytest.raises(Unavailable, match="unreachable"):
                await in_flight  # its replies can never come: failed, not left hanging
            with pytest.raises(Unavailable, match="unreachable"):
                await client.infer(faces(1))
            assert time.monotonic() - started < 1.5
            assert "unreachable" in client.health_error()
            server.start()
            await eventually(lambda: _healthy(client))
            async with live_consumer(model, server.url):
                result = await asyncio.wait_for(client.infer(faces(2)), 10)
            assert result.outputs["logits"].shape == (2, 2)

    with running_redis(tmp_path) as server:
        asyncio.run(scenario(server))


async def _healthy(client: RedisInferenceClient) -> bool:
    return client.health_error() is None


def test_fsfm_worker_refuses_to_start_without_a_redis_url_or_models(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FSFM_QUEUE", raising=False)
    result = CliRunner().invoke(app, ["worker", "--models", str(tmp_path)])
    assert result.exit_code == 2 and "needs a Redis URL" in result.output
    result = CliRunner().invoke(app, ["worker", "--models", str(tmp_path), "--queue", SHARED, "--metrics-port", "0"])
    assert result.exit_code == 1
