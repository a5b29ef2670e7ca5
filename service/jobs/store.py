"""Where asynchronous jobs live: the Job document (docs/api.md, "Jobs") and a ``JobStore`` with two
implementations, in this process (``MemoryJobStore``, ``FSFM_QUEUE=local``) or in Redis
(``RedisJobStore``, when the queue is Redis: any API node answers for any job, and jobs outlive the
node that accepted them).

Contract of both:

- A job is written by the node that runs it (its owner, ``save``) and by whoever cancels it or finds
  it abandoned (``cancel``, ``get``). Every write is a compare-and-set on the record's revision, so
  the first of two racing writers wins and the other reads again: a job that has finished keeps the
  status it finished with (an owner that saves ``running`` over ``cancelled`` gets the cancelled job
  back, and stops).
- A queued or running job holds a lease, renewed by each of its owner's saves (``LEASE_S``): a job
  whose lease has lapsed has lost its owner (the process died), and the next ``get`` fails it with
  reason ``interrupted`` rather than let it stay ``running`` for ever.
- A finished job is kept ``job_ttl_s`` after it finished (``expires_at``), then forgotten (404).
- An idempotency key (scoped by the caller, e.g. per API key) names the job it first created for as
  long as that job is kept; a submission that brings a used key gets that job, or 422
  ``idempotency_key_reused`` when its request differs (``fingerprint``), as Stripe answers.

Redis keys (the hash holds the document as JSON and the fields the compare-and-set reads):

  fsfm:job:<job_id>          hash: doc, rev, status, lease (epoch seconds), idem (its key's name)
  fsfm:job-key:<scope>:<key> string "<job_id> <fingerprint>"

Both expire with the job (``PEXPIRE`` at each write). Media is never stored: only the document.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import Conflict, InvalidRequest, NotFound, Unavailable

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
LEASE_S = 5.0  # an owner renews its jobs' leases every HEARTBEAT_S (runner.py); 5 missed renewals mean it is gone
MAX_MEMORY_JOBS = 10_000  # jobs kept in process, at most: the oldest finished ones go first
JOB_PREFIX = "fsfm:job:"
KEY_PREFIX = "fsfm:job-key:"


def now_iso(epoch_s: float | None = None) -> str:
    """An instant as ISO 8601 in UTC, to the millisecond: ``2026-12-03T15:04:05.123+00:00``."""
    return datetime.fromtimestamp(time.time() if epoch_s is None else epoch_s, UTC).isoformat(timespec="milliseconds")


class Progress(BaseModel):
    frames_done: int = Field(default=0, description="frames detected and cropped so far (an image is one frame)")
    frames_total: int | None = Field(
        default=None,
        description="frames planned (null until the media is opened); a video's pixel budget may end it sooner",
    )


class JobError(BaseModel):
    reason: str = Field(description="the stable reason of the analysis's error (docs/api.md), or `interrupted`")
    message: str


class Delivery(BaseModel):
    attempt: int = Field(description="1 for the first delivery")
    at: str = Field(description="when it was sent (ISO 8601)")
    status_code: int | None = Field(description="the receiver's HTTP status; null when no answer came")
    error: str | None = Field(
        default=None, description="why it failed: a non-2xx status, a timeout, a refused connection"
    )


class Webhook(BaseModel):
    url: str
    deliveries: list[Delivery] = Field(default_factory=list)


class Job(BaseModel):
    """The Job document: what ``GET /v1/jobs/{id}`` answers and a webhook carries."""

    job_id: str
    status: JobStatus
    task: str
    created_at: str
    updated_at: str
    expires_at: str | None = Field(
        default=None, description="when the finished job is forgotten (null until it finishes)"
    )
    progress: Progress = Field(default_factory=Progress)
    result: dict[str, Any] | None = Field(
        default=None,
        description="once succeeded: the analysis response, exactly as the synchronous endpoint answers it",
    )
    error: JobError | None = None
    webhook: Webhook | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def ended(self, status: JobStatus, ttl_s: float, error: JobError | None = None) -> Job:
        """This job, finished now with ``status``."""
        at = time.time()
        return self.model_copy(
            update={"status": status, "updated_at": now_iso(at), "expires_at": now_iso(at + ttl_s), "error": error}
        )


def new_job(task: str, callback_url: str | None) -> Job:
    created = now_iso()
    webhook = Webhook(url=callback_url) if callback_url else None
    return Job(
        job_id=uuid.uuid4().hex, status="queued", task=task, created_at=created, updated_at=created, webhook=webhook
    )


@dataclass(frozen=True)
class Idempotency:
    """A submission's idempotency key, already scoped to its caller, and its request's fingerprint."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Record:
    """A stored job: its document, its revision (compare-and-set), its lease (epoch seconds; 0 once
    finished) and the storage name of its idempotency key, if it has one."""

    job: Job
    rev: int
    lease_until: float
    idempotency_key: str | None = None


class JobStore(ABC):
    """The transitions every store shares, over four primitives its implementations provide."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s

    # ---- primitives --------------------------------------------------------------------------

    @abstractmethod
    async def _read(self, job_id: str) -> Record | None: ...

    @abstractmethod
    async def _write(self, record: Record, expected_rev: int) -> bool:
        """Store ``record`` if the stored revision is still ``expected_rev``; False if it is not."""

    @abstractmethod
    async def _insert(self, record: Record, idempotency: Idempotency | None) -> str | None:
        """Store a new record, and its idempotency key unless the key is taken: then store nothing and
        return the key's value, ``"<job_id> <fingerprint>"``."""

    async def close(self) -> None:  # noqa: B027 (a store without connections has nothing to close)
        pass

    # ---- transitions -------------------------------------------------------------------------

    def _kept_s(self, record: Record) -> float:
        """How long a record is kept from this write: a running job's lease outlasts it by the TTL."""
        return self.ttl_s + (0.0 if record.job.finished else LEASE_S)

    def _record(self, job: Job, rev: int, idempotency_key: str | None) -> Record:
        return Record(job, rev, 0.0 if job.finished else time.time() + LEASE_S, idempotency_key)

    async def create(self, job: Job, idempotency: Idempotency | None) -> Job | None:
        """Store the new ``job``: None. With a used idempotency key, the job it was used for (unchanged),
        or ``InvalidRequest("idempotency_key_reused")`` when that was another request."""
        taken = await self._insert(self._record(job, 1, idempotency and idempotency.key), idempotency)
        if taken is None:
            return None
        job_id, _, fingerprint = taken.partition(" ")
        assert idempotency is not None
        if fingerprint != idempotency.fingerprint:
            raise InvalidRequest(
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request (other media or parameters)",
            )
        return await self.get(job_id)

    async def get(self, job_id: str) -> Job:
        """The job, or ``NotFound("job_not_found")``; a queued or running job whose owner's lease has
        lapsed is failed (``interrupted``) first."""
        while True:
            record = await self._read(job_id)
            if record is None:
                raise NotFound("job_not_found", f"no job {job_id!r} (unknown, or expired)")
            if record.job.finished or record.lease_until >= time.time():
                return record.job
            error = JobError(reason="interrupted", message="the node running the job stopped before it finished")
            failed = record.job.ended("failed", self.ttl_s, error)
            if await self._write(self._record(failed, record.rev + 1, record.idempotency_key), record.rev):
                return failed

    async def save(self, job: Job) -> Job | None:
        """The owner's write (renews the lease). Returns the stored job: ``job``, or, when the job has
        finished otherwise meanwhile (cancelled elsewhere), that one, unchanged; None when the store
        has forgotten the job (expired, or a Redis that lost its data): its owner stops it."""
        while True:
            record = await self._read(job.job_id)
            if record is None:
                return None
            if record.job.finished and record.job.status != job.status:
                return record.job
            if await self._write(self._record(job, record.rev + 1, record.idempotency_key), record.rev):
                return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (its owner stops it); cancelling a cancelled job answers it
        again; a job that has succeeded or failed is ``Conflict("job_finished")``."""
        while True:
            record = await self._read(job_id)
            if record is None:
                raise NotFound("job_not_found", f"no job {job_id!r} (unknown, or expired)")
            if record.job.status == "cancelled":
                return record.job
            if record.job.finished:
                message = f"the job has {record.job.status}; only a queued or running job can be cancelled"
                raise Conflict("job_finished", message)
            cancelled = record.job.ended("cancelled", self.ttl_s)
            if await self._write(self._record(cancelled, record.rev + 1, record.idempotency_key), record.rev):
                return cancelled


class MemoryJobStore(JobStore):
    """Jobs in this process (``FSFM_QUEUE=local``): gone when it stops. At most ``MAX_MEMORY_JOBS``."""

    def __init__(self, ttl_s: float, max_jobs: int = MAX_MEMORY_JOBS) -> None:
        super().__init__(ttl_s)
        self._records: dict[str, tuple[Record, float]] = {}  # job id -> (record, expiry in epoch seconds)
        self._keys: dict[str, tuple[str, float]] = {}  # idempotency key -> (its value, expiry)
        self._max_jobs = max_jobs

    async def _read(self, job_id: str) -> Record | None:
        entry = self._records.get(job_id)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    async def _write(self, record: Record, expected_rev: int) -> bool:
        current = await self._read(record.job.job_id)
        if current is None or current.rev != expected_rev:
            return False
        self._put(record)
        return True

    async def _insert(self, record: Record, idempotency: Idempotency | None) -> str | None:
        self._sweep()
        if idempotency is not None:
            taken = self._keys.get(idempotency.key)
            if taken is not None and taken[1] >= time.time():
                return taken[0]
        if idempotency is not None:
            self._keys[idempotency.key] = (f"{record.job.job_id} {idempotency.fingerprint}", 0.0)
        self._put(record)  # gives the key the record's expiry too
        return None

    def _put(self, record: Record) -> None:
        expiry = time.time() + self._kept_s(record)
        self._records[record.job.job_id] = (record, expiry)
        if record.idempotency_key is not None and record.idempotency_key in self._keys:
            self._keys[record.idempotency_key] = (self._keys[record.idempotency_key][0], expiry)

    def _sweep(self) -> None:
        """Forget expired jobs and keys; past ``max_jobs``, the finished jobs that expire first."""
        now = time.time()
        for job_id in [job_id for job_id, (_, expiry) in self._records.items() if expiry < now]:
            del self._records[job_id]
        for key in [key for key, (_, expiry) in self._keys.items() if expiry < now]:
            del self._keys[key]
        finished = sorted((expiry, job_id) for job_id, (r, expiry) in self._records.items() if r.job.finished)
        for _, job_id in finished[: max(0, len(self._records) + 1 - self._max_jobs)]:
            record, _ = self._records.pop(job_id)
            if record.idempotency_key is not None:
                self._keys.pop(record.idempotency_key, None)


_INSERT = """
if #KEYS > 1 then
  local taken = redis.call('GET', KEYS[2])
  if taken then return taken end
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'rev', ARGV[2], 'status', ARGV[3], 'lease', ARGV[4], 'idem', KEYS[2] or '')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return false
"""

_WRITE_IF_REV = """
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'rev', ARGV[3], 'status', ARGV[4], 'lease', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if #KEYS > 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
return 1
"""


class RedisJobStore(JobStore):
    """Jobs in Redis (the queue's), so every API node answers for every job and a restart loses none.
    Redis failing answers ``Unavailable("job_store_unreachable")`` (503)."""

    def __init__(self, redis: Redis, ttl_s: float) -> None:
        super().__init__(ttl_s)
        self._redis = redis
        self._insert_script = redis.register_script(_INSERT)
        self._write_script = redis.register_script(_WRITE_IF_REV)

    async def close(self) -> None:
        await self._redis.aclose()

    async def _read(self, job_id: str) -> Record | None:
        async with _reachable():
            fields = await self._redis.hgetall(JOB_PREFIX + job_id)
        if not fields or b"doc" not in fields:
            return None
        idempotency_key = fields.get(b"idem", b"").decode() or None
        job = Job.model_validate_json(fields[b"doc"])
        return Record(job, int(fields[b"rev"]), float(fields[b"lease"]), idempotency_key)

    async def _write(self, record: Record, expected_rev: int) -> bool:
        keys = [JOB_PREFIX + record.job.job_id, *([record.idempotency_key] if record.idempotency_key else [])]
        args = [str(expected_rev), *self._fields(record), self._kept_ms(record)]
        async with _reachable():
            return bool(await self._write_script(keys=keys, args=args))

    async def _insert(self, record: Record, idempotency: Idempotency | None) -> str | None:
        keys = [JOB_PREFIX + record.job.job_id]
        value = ""
        if idempotency is not None:
            keys.append(idempotency.key)
            value = f"{record.job.job_id} {idempotency.fingerprint}"
        async with _reachable():
            taken = await self._insert_script(keys=keys, args=[*self._fields(record), value, self._kept_ms(record)])
        return taken.decode() if taken else None

    def _fields(self, record: Record) -> list[str]:
        """doc, rev, status, lease: the hash's fields in the scripts' order."""
        return [record.job.model_dump_json(), str(record.rev), record.job.status, repr(record.lease_until)]

    def _kept_ms(self, record: Record) -> int:
        return max(1, round(self._kept_s(record) * 1000))


def idempotency_key(scope: str, key: str) -> str:
    """The storage name of a caller's idempotency key (the same in both stores)."""
    return f"{KEY_PREFIX}{scope}:{key}"


@asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    try:
        yield
    except RedisError as exc:
        raise Unavailable("job_store_unreachable", f"the job store (Redis) did not answer: {exc}") from None
