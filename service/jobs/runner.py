"""Running asynchronous jobs: each is one ``AnalysisCore.analyze`` call, made just as a door makes it,
in the API node that accepted the job, with progress, cancellation and bounds (docs/api.md, "Jobs").

Bounds, per node: at most ``max_pending_jobs`` jobs queued or running, holding at most
``max_pending_job_bytes`` of media in all; a submission past either is refused 429 ``too_many_jobs``
before its body is read (``reserve``, on the declared ``Content-Length``) or, for the bytes, as soon
as it has been (``JobSlot.hold``). ``max_running_jobs`` of them are analysed at once, the rest wait
in order. A job's media is held in memory only (never on disk, never in Redis), by its analysis
request alone (``EncodedMedia``), and dropped as soon as it is decoded (a video's as its last sampled
frame is decoded): not kept while its faces wait for inference. Its bytes count against
``max_pending_job_bytes`` until the job ends. Its video limits are the job ones (``Settings.job_video_limits``),
its deadline ``job_timeout_s`` from when it starts. A core that is full (429 ``overloaded``) is
asked again after its ``Retry-After``, within that deadline.

The job's document is saved to the store (``store.py``) when it starts, every ``HEARTBEAT_S`` while
it runs (its progress, and its lease), and when it finishes; its result is ``report_json(report)``,
the synchronous endpoint's response. Cancellation: ``DELETE`` on this node cancels the analysis at
once; on another node it marks the job cancelled in the store, and the owner's next heartbeat finds
that and cancels the analysis (the core stops decoding and detecting at the next frame). When the
job has finished, its webhook (``webhooks.py``), if it has a ``callback_url``, is delivered, each
delivery recorded in the job. ``stop`` (the server's shutdown) fails the jobs still pending here with
reason ``interrupted``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any

from service.core import AnalysisCore, AnalysisOptions, AnalysisRequest, Report, RequestContext
from service.errors import AnalysisError, Overloaded, Unavailable
from service.jobs.metrics import JobMetrics
from service.jobs.store import (
    Delivery,
    Idempotency,
    Job,
    JobError,
    JobStore,
    MemoryJobStore,
    Progress,
    RedisJobStore,
    new_job,
)
from service.jobs.webhooks import WebhookSender, webhook_secret
from service.media import EncodedMedia
from service.rest.schemas import report_json
from service.settings import Settings

log = logging.getLogger("fsfm.jobs")

TRANSPORT = "job"  # the transport label of a job's analysis in the request metrics
HEARTBEAT_S = 1.0  # progress and lease saves of a running job; a cancel on another node stops it within this
TOO_MANY_JOBS_RETRY_S = 5.0  # Retry-After of too_many_jobs: jobs take seconds to minutes, so not sooner
SHUTDOWN_REASONS = frozenset({"draining", "shutting_down"})  # the core's refusals while the server stops
INTERRUPTED = JobError(reason="interrupted", message="the server shut down before the job finished")


class _EndedElsewhere(Exception):
    """The job was cancelled on another node (or forgotten by the store) before it started here."""


@dataclass(frozen=True)
class Submission:
    """A job as submitted: the analysis's options, its media, where its webhook goes."""

    options: AnalysisOptions
    media: bytes
    callback_url: str | None = None

    def fingerprint(self) -> str:
        """What makes two submissions the same request (for ``Idempotency-Key``): media and parameters."""
        digest = hashlib.sha256(self.media)
        params = {**asdict(self.options), "callback_url": self.callback_url}
        digest.update(json.dumps(params, sort_keys=True).encode())
        return digest.hexdigest()


class JobSlot:
    """A place among this node's pending jobs, held from before the submission's body is read until
    its job ends (``release``, idempotent), with the media bytes it holds."""

    def __init__(self, runner: JobRunner) -> None:
        self._runner: JobRunner | None = runner
        self.bytes = 0

    def hold(self, size: int) -> None:
        """Count ``size`` media bytes against the node's budget, or refuse them (429 too_many_jobs)."""
        assert self._runner is not None
        self._runner._check_bytes(size)
        self._runner._held_bytes += size
        self.bytes += size

    def release(self) -> None:
        if self._runner is not None:
            self._runner._held_bytes -= self.bytes
            self._runner._slots.discard(self)
            self._runner = None


@dataclass
class _Pending:
    """A job of this node, queued or running: its latest document, its task, its last progress."""

    job: Job
    slot: JobSlot
    task: asyncio.Task | None = None
    progress: tuple[int, int] | None = None  # set from the preprocessing thread


class JobRunner:
    def __init__(self, core: AnalysisCore, settings: Settings, store: JobStore) -> None:
        self.core, self.settings, self.store = core, settings, store
        secret = webhook_secret(settings)
        self.webhooks = WebhookSender(secret, settings) if secret is not None else None
        self._slots: set[JobSlot] = set()
        self._held_bytes = 0
        self._pending: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task] = set()  # job runs and webhook deliveries, for ``stop``
        self._turns = asyncio.Semaphore(settings.max_running_jobs)
        self._heartbeat: asyncio.Task | None = None
        self._stopping = False
        self.metrics = core.metrics.group(JobMetrics)
        for state in ("queued", "running"):
            self.metrics.pending.labels(state).set_function(lambda state=state: self._count(state))

    # ---- the routes' calls --------------------------------------------------------------------

    def reserve(self, declared_bytes: int | None = None) -> JobSlot:
        """A place for one more job before its body is read, or the refusal: 503 while the service is
        not ready or shutting down, 429 ``too_many_jobs`` past the node's bounds."""
        self.core.admission.check()
        if self._stopping:
            raise Unavailable("draining", "the service is shutting down")
        if len(self._slots) >= self.settings.max_pending_jobs:
            limit = self.settings.max_pending_jobs
            raise self._too_many(f"{len(self._slots)} jobs are queued or running here, limit {limit}")
        if declared_bytes is not None:
            self._check_bytes(min(declared_bytes, self.settings.job_max_upload_bytes))
        slot = JobSlot(self)
        self._slots.add(slot)
        return slot

    async def submit(self, slot: JobSlot, submission: Submission, idempotency_key: str | None) -> tuple[Job, bool]:
        """Store and start a job in ``slot``: (the job, False); or, for an idempotency key already used
        for the same request, (that job, True), the slot released."""
        job = new_job(submission.options.task, submission.callback_url)
        idempotency = Idempotency(idempotency_key, submission.fingerprint()) if idempotency_key else None
        try:
            existing = await self.store.create(job, idempotency)
        except BaseException:
            slot.release()
            raise
        if existing is not None:
            slot.release()
            return existing, True
        pending = self._pending[job.job_id] = _Pending(job, slot)
        pending.task = self._spawn(self._run(pending, submission.options, EncodedMedia(submission.media)))
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="job-heartbeat")
        return job, False

    async def get(self, job_id: str) -> Job:
        return await self.store.get(job_id)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job wherever it runs; here, its analysis stops now."""
        job = await self.store.cancel(job_id)
        pending = self._pending.get(job_id)
        if pending is not None and pending.task is not None:
            pending.task.cancel()
        return job

    async def stop(self) -> None:
        """The server is shutting down: refuse new jobs, end this node's pending jobs as ``interrupted``
        and its webhook deliveries, close the store and the HTTP client."""
        self._stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([self._heartbeat] if self._heartbeat else []), return_exceptions=True)
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.store.close()

    # ---- a job's life -------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, pending: _Pending, options: AnalysisOptions, media: EncodedMedia) -> None:
        try:
            async with self._turns:
                if not await self._save(pending, pending.job.model_copy(update={"status": "running"})):
                    raise _EndedElsewhere()  # cancelled on another node while it waited for its turn
                report = await self._analyze(pending, options, media)
            done = len(report.frames)
            succeeded = pending.job.model_copy(
                update={"result": report_json(report), "progress": Progress(frames_done=done, frames_total=done)}
            )
            final = succeeded.ended("succeeded", self.settings.job_ttl_s)
        except (asyncio.CancelledError, _EndedElsewhere):
            final = self._with_progress(pending).ended("cancelled", self.settings.job_ttl_s)
            if self._stopping:
                final = final.ended("failed", self.settings.job_ttl_s, INTERRUPTED)
        except AnalysisError as exc:
            error = INTERRUPTED if exc.reason in SHUTDOWN_REASONS else JobError(reason=exc.reason, message=exc.message)
            final = self._with_progress(pending).ended("failed", self.settings.job_ttl_s, error)
        except Exception:
            log.exception("job %s failed", pending.job.job_id)
            error = JobError(reason="internal_error", message="the server failed to run the job")
            final = self._with_progress(pending).ended("failed", self.settings.job_ttl_s, error)
        finally:
            del media  # the holder (its bytes went when the core decoded them)
            pending.slot.release()
        pending.job = final  # the heartbeat leaves it alone from here
        self._pending.pop(final.job_id, None)
        try:
            stored = await self.store.save(final)
        except AnalysisError as exc:  # the store is unreachable: its lease will lapse, and readers see it interrupted
            log.warning("cannot save the outcome of job %s: %s", final.job_id, exc.message)
            return
        self.metrics.finished.labels((stored or final).status).inc()
        if stored is not None and stored.webhook is not None and self.webhooks is not None and not self._stopping:
            await self._deliver(stored)

    async def _analyze(self, pending: _Pending, options: AnalysisOptions, media: EncodedMedia) -> Report:
        """The core's report on the job's media; a full core is asked again after its Retry-After, when it
        refused before taking the media (a queue too full for the evidence of faces already judged is final)."""
        deadline = time.monotonic() + self.settings.job_timeout_s
        limits = self.settings.job_video_limits()

        def progress(done: int, planned: int) -> None:
            pending.progress = (done, planned)

        while True:
            context = RequestContext(TRANSPORT, deadline, request_id=pending.job.job_id, progress=progress)
            try:
                return await self.core.analyze(AnalysisRequest(options, context, media=media, video_limits=limits))
            except Overloaded as exc:
                if media.taken or time.monotonic() + exc.retry_after_s >= deadline:
                    raise
                await asyncio.sleep(exc.retry_after_s)

    def _with_progress(self, pending: _Pending) -> Job:
        if pending.progress is None:
            return pending.job
        done, planned = pending.progress
        return pending.job.model_copy(update={"progress": Progress(frames_done=done, frames_total=planned)})

    async def _save(self, pending: _Pending, job: Job) -> bool:
        """Save a pending job's document; False (and its analysis cancelled) when it has ended
        elsewhere (cancelled on another node) or been forgotten."""
        pending.job = job
        stored = await self.store.save(job)
        if pending.job.finished:  # its run has ended meanwhile, and saves its own outcome
            return False
        if stored is None or stored.status != job.status:
            if pending.task is not None and pending.task is not asyncio.current_task():
                pending.task.cancel()
            return False
        return True

    async def _beat(self) -> None:
        """Every ``HEARTBEAT_S``: save each running job's progress and lease, and notice cancellations."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for pending in list(self._pending.values()):
                if pending.job.finished:
                    continue
                try:
                    await self._save(pending, self._with_progress(pending))
                except AnalysisError as exc:  # the store is unreachable: the lease may lapse
                    log.warning("cannot save job %s: %s", pending.job.job_id, exc.message)
                except Exception:  # the heartbeat must outlive any one job's failure
                    log.exception("cannot save job %s", pending.job.job_id)

    async def _deliver(self, job: Job) -> None:
        async def record(delivery: Delivery) -> Job | None:
            nonlocal job
            assert job.webhook is not None
            self.metrics.deliveries.labels("delivered" if delivery.error is None else "failed").inc()
            webhook = job.webhook.model_copy(update={"deliveries": [*job.webhook.deliveries, delivery]})
            stored = await self.store.save(job.model_copy(update={"webhook": webhook}))
            job = stored or job
            return stored

        assert self.webhooks is not None
        try:
            await self.webhooks.deliver(job, record)
        except AnalysisError as exc:
            log.warning("cannot record the webhook deliveries of job %s: %s", job.job_id, exc.message)

    def _count(self, status: str) -> int:
        return sum(pending.job.status == status for pending in self._pending.values())

    def _check_bytes(self, size: int) -> None:
        limit = self.settings.max_pending_job_bytes
        if self._held_bytes + size > limit:
            held = self._held_bytes
            raise self._too_many(f"the pending jobs here hold {held} bytes of media; this one would pass {limit}")

    def _too_many(self, message: str) -> Overloaded:
        return Overloaded(message, retry_after_s=TOO_MANY_JOBS_RETRY_S, reason="too_many_jobs")


def create_runner(core: AnalysisCore, settings: Settings) -> JobRunner:
    """The node's job runner, its store in Redis when the queue is Redis (every node sees every job),
    in this process otherwise."""
    if settings.queue == "local":
        return JobRunner(core, settings, MemoryJobStore(settings.job_ttl_s))
    from service.redis_queue import connect

    return JobRunner(core, settings, RedisJobStore(connect(settings.queue), settings.job_ttl_s))
