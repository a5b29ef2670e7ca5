"""Both job stores, in process and in Redis (the shared one on 127.0.0.1:6379, each test with job ids
and idempotency keys of its own), through the same transitions: a finished job keeps its status
against its owner's late saves, cancelling answers once and then conflicts, idempotency keys give the
first job or refuse another request, finished jobs are forgotten after their TTL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import redis

from service.errors import Conflict, InvalidRequest, NotFound
from service.jobs.store import (
    Idempotency,
    JobStore,
    MemoryJobStore,
    Progress,
    RedisJobStore,
    idempotency_key,
    new_job,
)
from service.redis_queue import connect

SHARED = "redis://127.0.0.1:6379/0"
TTL_S = 0.3  # short, so that expiry is seen within the test


@asynccontextmanager
async def job_store(kind: str, ttl_s: float = 60.0) -> AsyncIterator[JobStore]:
    store: JobStore = MemoryJobStore(ttl_s) if kind == "memory" else RedisJobStore(connect(SHARED), ttl_s)
    try:
        yield store
    finally:
        await store.close()


def run(kind: str, scenario: Callable[[JobStore], Awaitable[None]], ttl_s: float = 60.0) -> None:
    async def main() -> None:
        async with job_store(kind, ttl_s) as store:
            await scenario(store)

    asyncio.run(main())


STORES = ["memory", "redis"]


@pytest.mark.parametrize("kind", STORES)
def test_a_cancelled_job_stays_cancelled_whatever_its_owner_saves_later(kind: str) -> None:
    async def scenario(store: JobStore) -> None:
        job = new_job("deepfake", None)
        assert await store.create(job, None) is None
        running = job.model_copy(update={"status": "running"})
        assert await store.save(running) == running
        cancelled = await store.cancel(job.job_id)
        assert cancelled.status == "cancelled" and cancelled.expires_at is not None
        assert await store.save(running) == cancelled  # the owner learns of it, and changes nothing
        assert await store.cancel(job.job_id) == cancelled  # cancelling again answers the same
        finished = cancelled.model_copy(update={"progress": Progress(frames_done=3, frames_total=9)})
        assert await store.save(finished) == finished  # the owner's final word, same status
        assert await store.get(job.job_id) == finished

    run(kind, scenario)


@pytest.mark.parametrize("kind", STORES)
def test_a_finished_job_cannot_be_cancelled_and_is_forgotten_after_its_ttl(kind: str) -> None:
    async def scenario(store: JobStore) -> None:
        job = new_job("deepfake", None)
        await store.create(job, None)
        done = job.ended("succeeded", TTL_S)
        assert await store.save(done) == done
        with pytest.raises(Conflict) as refused:
            await store.cancel(job.job_id)
        assert refused.value.reason == "job_finished"
        await asyncio.sleep(TTL_S + 0.1)
        with pytest.raises(NotFound):
            await store.get(job.job_id)
        assert await store.save(done) is None  # forgotten: its owner has nothing to save to

    run(kind, scenario, ttl_s=TTL_S)


@pytest.mark.parametrize("kind", STORES)
def test_an_idempotency_key_gives_its_first_job_or_refuses_another_request(kind: str) -> None:
    key = idempotency_key(f"test-{uuid.uuid4().hex[:8]}", "retry-1")

    async def scenario(store: JobStore) -> None:
        first = new_job("deepfake", None)
        assert await store.create(first, Idempotency(key, "same")) is None
        again = await store.create(new_job("deepfake", None), Idempotency(key, "same"))
        assert again == first
        with pytest.raises(InvalidRequest) as refused:
            await store.create(new_job("deepfake", None), Idempotency(key, "other media"))
        assert refused.value.reason == "idempotency_key_reused"

    run(kind, scenario)
    if kind == "redis":
        with redis.Redis.from_url(SHARED) as r:
            assert 0 < r.pttl(key) <= 65_000  # the key expires with its job (TTL + lease while queued)
            r.delete(key)


def test_the_memory_store_keeps_at_most_its_limit_forgetting_finished_jobs_first() -> None:
    async def scenario() -> None:
        store = MemoryJobStore(ttl_s=60.0, max_jobs=2)
        running, done = new_job("deepfake", None), new_job("deepfake", None)
        await store.create(running, None)
        await store.create(done, None)
        await store.save(done.ended("succeeded", 60.0))
        newest = new_job("deepfake", None)
        await store.create(newest, None)
        assert (await store.get(running.job_id)).status == "queued" and await store.get(newest.job_id)
        with pytest.raises(NotFound):
            await store.get(done.job_id)

    asyncio.run(scenario())


def test_redis_keeps_only_the_document_and_its_key_with_expiries() -> None:
    async def scenario(store: JobStore) -> str:
        job = new_job("liveness", "https://hooks.example.com/x")
        await store.create(job, None)
        return job.job_id

    job_id = asyncio.run(_with_redis(scenario))
    with redis.Redis.from_url(SHARED) as r:
        fields = r.hgetall(f"fsfm:job:{job_id}")
        assert set(fields) == {b"doc", b"rev", b"status", b"lease", b"idem"} and fields[b"status"] == b"queued"
        assert float(fields[b"lease"]) > time.time()  # a queued job's owner holds its lease
        assert 0 < r.pttl(f"fsfm:job:{job_id}") <= 65_000
        r.delete(f"fsfm:job:{job_id}")


async def _with_redis(scenario: Callable[[JobStore], Awaitable[str]]) -> str:
    async with job_store("redis") as store:
        return await scenario(store)
