"""``AnalysisCore``: the one entry into the analysis, ``analyze(request) -> Report``, behind both doors.

A door turns its protocol into an ``AnalysisRequest`` and the ``Report`` back into its protocol;
everything between is here: admission (``admission.py``), model choice and backends
(``models.py``), the media step (``service/media.py``), the pipeline (``pipeline.py``), the verdict,
the face tracks and the per-stream aggregate (``report.py``, ``streams.py``). Every failure of a
request is counted here once (``fsfm_request_failure``), those a door finds before calling
``analyze`` included (``refused``). The request's deadline is enforced here: the backends drop queued faces when it
passes, and a backstop ``CORE_DEADLINE_SLACK_S`` later ends slower stages.

Order of a request: the cheap checks (readiness, model, parameters), then admission (429 at once
when the service is full), then a preprocessing slot, decode, detect and crop (the slot is given back
before inference), then the batcher. Its work runs as a task of its own: cancelling the caller (a
client gone, a gRPC call cancelled or past its deadline) cancels it, and its thread-pool work stops
at the next frame (``service/cancellation.py``); ``abort_in_flight`` (the end of the shutdown's grace
period) ends every admitted request with ``Unavailable("shutting_down")``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from fsfm.analysis import Verdict, verdict
from fsfm.evidence import AUDIT, FACE_EVIDENCE_KINDS, audit_record, code_version, inferences_per_face, parse_evidence
from fsfm.face.detector import FaceDetector, create_detector
from fsfm.package import ModelRepository
from fsfm.package.manifest import Manifest
from fsfm.scoring import resolve_threshold
from service.cancellation import ContextThreadPool, watch
from service.core.admission import Admission, Reservation, Ticket
from service.core.detection import LoadAwareDetector
from service.core.models import ModelListing, ServedModel, ServedModels
from service.core.pipeline import Pipeline
from service.core.report import AGGREGATE_WINDOW_FRAMES, AggregateSnapshot, FrameReport, Report
from service.core.request import AnalysisOptions, AnalysisRequest, RequestContext
from service.core.streams import Streams
from service.errors import AnalysisError, BadInput, DeadlineExceeded, InvalidRequest, ModelNotFound, Unavailable
from service.media import MAX_SAMPLING_FPS, EncodedMedia, Sampling, decode_media
from service.metrics import Metrics
from service.readiness import not_ready_reason
from service.settings import Settings, VideoLimits

log = logging.getLogger("fsfm.service")

CORE_DEADLINE_SLACK_S = 0.25  # the backends answer the deadline themselves (and say so); this ends slower stages
PREPROCESS_THREADS = 2  # decode, detect and crop run here, off the event loop; engines have their own threads


class AnalysisCore:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models = ServedModels(settings, self.metrics)
        self.admission = Admission(
            settings.max_concurrent_requests, settings.max_waiting_requests, self.metrics.admitted
        )
        self.streams = Streams()
        self.detector: FaceDetector | None = None
        self._cpu = ContextThreadPool(max_workers=PREPROCESS_THREADS, thread_name_prefix="preprocess")
        self._pipeline: Pipeline | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, repository: ModelRepository | None = None, detector: FaceDetector | None = None) -> None:
        """Load every version of every package in the repository, warm each engine up, start the backends.
        ``repository`` and ``detector``, when given, are what the start-up checks already read
        (``service/startup.py``); else they are made here."""
        loop = asyncio.get_running_loop()
        config = self.settings.detector_config()
        if detector is None:
            detector = await loop.run_in_executor(self._cpu, create_detector, config)
        shared = None  # a one-thread copy for when other requests are in flight (``service/core/detection.py``)
        if (os.cpu_count() or 1) > 1:
            shared = await loop.run_in_executor(self._cpu, create_detector, config.model_copy(update={"threads": 1}))
        self.detector = LoadAwareDetector(detector, shared, lambda: self.admission.in_flight <= 1)
        self._pipeline = Pipeline(self.detector, self._cpu, self.metrics, self.settings.faces_per_request())
        await loop.run_in_executor(self._cpu, self.models.load, repository)
        await loop.run_in_executor(self._cpu, code_version)  # audit records carry it: git runs here, not in a request
        self.models.start()
        self.admission.ready = True
        chosen = ", ".join(f"{ref} on {e['engine']} {e['precision']}" for ref, e in self.models.engines().items())
        log.info("serving %s", chosen or ", ".join(self.models.models) or "no models")

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work, let in-flight requests finish (up to ``grace_s``). True if all finished."""
        return await self.admission.drain(grace_s)

    def abort_in_flight(self) -> int:
        """End every admitted request now: each is answered ``Unavailable("shutting_down")``, its
        work stops at the next stage. Returns how many."""
        return self.admission.abort()

    async def stop(self) -> None:
        self.admission.ready = False
        await self.models.stop()
        self._cpu.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.admission.ready

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, details) for /readyz and the gRPC health service; ``reason`` says why not ready."""
        backend_errors = self.models.backend_errors()
        details: dict[str, object] = {
            "reason": not_ready_reason(
                loaded=self.admission.ready,
                serving=bool(self.models.models),
                draining=self.admission.draining,
                backend_down=bool(backend_errors),
            ),
            "models_loaded": self.admission.ready,
            "draining": self.admission.draining,
            "models": sorted(self.models.models),
            "queue": self.settings.queue if self.settings.queue == "local" else "redis",
            "precision": self.settings.precision,
            "engines": self.models.engines(),
        }
        if backend_errors:
            details["backend_errors"] = backend_errors
        repository = self.models.repository
        if repository is not None and repository.errors:
            details["skipped_packages"] = repository.errors
        return details["reason"] is None, details

    def tasks(self) -> list[str]:
        return self.models.tasks()

    def listing(self) -> list[ModelListing]:
        return self.models.listing()

    # ---- streams ---------------------------------------------------------------------------

    def open_stream(self, window: int = AGGREGATE_WINDOW_FRAMES, keep_tracks: bool = False) -> str:
        """A new stream's id; its requests carry it in ``RequestContext.stream_id``. Close it when done.
        ``keep_tracks``: keep every track's frames and the ended tracks (a video's stream)."""
        return self.streams.open(window, keep_tracks)

    def close_stream(self, stream_id: str) -> None:
        self.streams.close(stream_id)

    def failed_frame_aggregate(self, stream_id: str, sequence: int) -> AggregateSnapshot:
        """The aggregate after the stream's request ``sequence``, which failed (taken once)."""
        return self.streams.get(stream_id).failed.pop(sequence)

    # ---- analysis --------------------------------------------------------------------------

    def reserve(self) -> Reservation:
        """What a door asks before it even reads a request's body: a place in admission's line for
        it (pass it on in ``AnalysisRequest.reservation``), or the refusal ``analyze`` would give now
        for readiness or a full line, raised (the door counts it through ``refused``). So a burst is
        refused at once, rather than each request after its upload has been read."""
        return self.admission.reserve()

    def check_task(self, task: str) -> None:
        """404 ``task_not_served`` once the models are loaded and none is of ``task``: what a door asks
        before it reads an upload."""
        if self.ready and task not in self.tasks():
            raise ModelNotFound("task_not_served", f"no {task} model is loaded; served tasks: {self.tasks()}")

    def check(self, options: AnalysisOptions, video_limits: VideoLimits | None = None) -> None:
        """The cheap checks ``analyze`` makes first (the model, the threshold, the sampling parameters),
        for a door that accepts a request now and analyses it later (an asynchronous job); raises
        their ``AnalysisError`` (not counted: the door counts it through ``refused``)."""
        self._plan(options, video_limits or self.settings.video_limits())

    async def analyze(self, request: AnalysisRequest) -> Report:
        """Admit, analyse and count one request; raises ``AnalysisError`` (counted) when it fails."""
        options, context = request.options, request.context
        try:
            self.admission.check()
            plan = self._plan(options, request.video_limits or self.settings.video_limits())
            queued = plan.model.backend.pending
            ticket = self.admission.admit(plan.model.label, queued, self.settings.max_queue_size, request.reservation)
        except AnalysisError as exc:
            raise await self.refused(options, context, exc) from None
        started = time.monotonic()
        try:
            work = ticket.work = asyncio.ensure_future(self._analyze(request, plan, ticket))
            async with asyncio.timeout(max(0.0, context.deadline - started) + CORE_DEADLINE_SLACK_S):
                report = await work
        except TimeoutError:
            raise await self.refused(options, context, DeadlineExceeded()) from None
        except AnalysisError as exc:
            raise await self.refused(options, context, exc) from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if ticket.aborted and current is not None and not current.cancelling():
                shutting_down = Unavailable("shutting_down", "the service is shutting down")
                raise await self.refused(options, context, shutting_down) from None
            self._count_failure(options, context.transport, "cancelled")
            raise
        finally:
            self.admission.release(ticket)
        total = time.monotonic() - started
        report.timing_ms["total"] = round(total * 1000, 2)
        self.metrics.stage_duration.labels("total", report.model.ref).observe(total)
        self.metrics.request_success.labels(report.model.ref, options.task, context.transport).inc()
        if context.stream_id is not None:
            report.aggregate = await self.streams.get(context.stream_id).settle(context.sequence, report)
        return report

    async def refused(self, options: AnalysisOptions, context: RequestContext, error: AnalysisError) -> AnalysisError:
        """Count a failed request, one a door refused before calling ``analyze`` too; in a stream,
        settle the frame as failed. Returns ``error``, for the caller to raise."""
        self._count_failure(options, context.transport, error.reason)
        if context.stream_id is not None:
            await self.streams.get(context.stream_id).settle(context.sequence, None)
        return error

    def _count_failure(self, options: AnalysisOptions, transport: str, reason: str) -> None:
        label = self.models.metric_label(options.model)
        self.metrics.request_failure.labels(label, options.task, transport, reason).inc()

    def _plan(self, options: AnalysisOptions, limits: VideoLimits) -> _Plan:
        """The checks that need no work: the model, the threshold, the video sampling parameters, the evidence."""
        max_frames = self._max_frames(options, limits.max_frames)
        try:
            evidence = parse_evidence(options.evidence)
        except ValueError as exc:
            raise BadInput("unknown_evidence", str(exc)) from None
        evidence_faces = self.settings.evidence_faces(evidence)
        if evidence & FACE_EVIDENCE_KINDS and evidence_faces == 0:
            message = (
                f"{', '.join(sorted(evidence & FACE_EVIDENCE_KINDS))} costs {inferences_per_face(evidence)} "
                f"inferences per face; this server's queue holds {self.settings.max_queue_size}"
            )
            raise BadInput("evidence_exceeds_queue", message)
        model = self.models.resolve(options)
        threshold, source = _threshold(model.manifest, options)
        return _Plan(model, threshold, source, max_frames, evidence, evidence_faces, limits)

    async def _analyze(self, request: AnalysisRequest, plan: _Plan, ticket: Ticket) -> Report:
        options, context = request.options, request.context
        model, threshold, source = plan.model, plan.threshold, plan.threshold_source
        manifest = model.manifest
        watch(ticket.ended)  # this request's thread-pool work stops once it has ended
        await ticket.preprocessing()
        self.admission.check_queue(model.label, model.backend.pending, self.settings.max_queue_size)
        decode_s = 0.0
        limits = plan.limits
        loop = asyncio.get_running_loop()
        digest = None
        if request.media is not None:
            data = request.media.take() if isinstance(request.media, EncodedMedia) else request.media
            if AUDIT in plan.evidence:
                digest = await loop.run_in_executor(self._cpu, _sha256, [data])
            sampling = Sampling(limits.max_seconds, plan.max_frames, options.fps, limits.max_pixels)
            started = time.monotonic()
            media = await loop.run_in_executor(
                self._cpu, decode_media, data, request.accept, self.settings.image_limits(), sampling
            )
            del data  # from here only a video's frames hold the bytes, until their decoding ends
            decode_s = time.monotonic() - started
            frames, is_video, planned = media.frames, media.kind == "video", media.planned
        else:
            planned = len(request.frames or [])
            frames, is_video = iter(request.frames or []), planned > 1
            if AUDIT in plan.evidence:
                digest = await loop.run_in_executor(self._cpu, _sha256, [f.rgb for f in request.frames or []])
        progress = context.progress
        assert self._pipeline is not None
        audit = None
        if digest is not None:
            engine = self.models.engines().get(model.label)
            audit = audit_record(digest, manifest, model.package_sha256, threshold, source, engine, context.request_id)
        result = await self._pipeline.run(
            model,
            frames,
            threshold,
            context.deadline,
            on_prepared=ticket.prepared,
            evidence=plan.evidence,
            evidence_faces=plan.evidence_faces,
            max_faces=limits.max_faces,
            on_frame=None if progress is None else lambda done: progress(done, planned),
        )
        timing = {**result.stage_s, "decode": decode_s + result.stage_s["decode"]}  # a video decodes as it goes
        if request.media is not None:
            self.metrics.stage_duration.labels("decode", model.label).observe(timing["decode"])
        frames = result.frames
        if context.stream_id is not None:  # a stream's frame: numbered and timed as its client says
            frames = [FrameReport(context.index, context.time_s, frame.faces) for frame in frames]
        report = Report(
            request_id=context.request_id,
            model=manifest,
            threshold=threshold,
            threshold_source=source,
            frames=frames,
            # A video's verdict is its most suspicious track's, set once its faces are tracked (below).
            verdict=Verdict(None, None, "no_face") if is_video else verdict(frames[0].faces, manifest, threshold),
            timing_ms={stage: round(seconds * 1000, 2) for stage, seconds in timing.items()},
            is_video=is_video,
            audit=audit,
        )
        if is_video and context.stream_id is None:  # an uploaded video is a stream of its own
            report.aggregate = await self._video_aggregate(report)
            report.verdict, report.tracks = report.aggregate.verdict, report.aggregate.tracks
        return report

    async def _video_aggregate(self, report: Report) -> AggregateSnapshot:
        """The aggregate of a video's frames, kept as a stream's while the request lasts: its tracks
        (with their frames) and its verdict, the most suspicious track over all its frames."""
        stream_id = self.open_stream(window=len(report.frames), keep_tracks=True)
        try:
            return await self.streams.get(stream_id).settle(0, report)
        finally:
            self.close_stream(stream_id)

    def _max_frames(self, options: AnalysisOptions, ceiling: int) -> int:
        """The frames a video may give: the request's ``max_frames`` within the ceiling (the server's
        ``max_video_frames``, or a job's own)."""
        if options.fps is not None and not 0 < options.fps <= MAX_SAMPLING_FPS:
            raise InvalidRequest("invalid_parameter", f"fps is {options.fps}; it must be in (0, {MAX_SAMPLING_FPS:g}]")
        if options.max_frames is not None and not 1 <= options.max_frames <= ceiling:
            message = f"max_frames is {options.max_frames}; this server allows {ceiling}"
            raise InvalidRequest("invalid_parameter", message)
        return options.max_frames or ceiling


@dataclass(frozen=True)
class _Plan:
    """What the cheap checks before admission found."""

    model: ServedModel
    threshold: float
    threshold_source: str
    max_frames: int
    evidence: frozenset[str]
    evidence_faces: int  # the judged faces that get the heatmap and probes asked for
    limits: VideoLimits


def _sha256(parts: list[bytes] | list[np.ndarray]) -> str:
    """SHA-256 of what a request sent: its media's bytes, or its frames' packed RGB pixels (gRPC raw images)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.tobytes())
    return digest.hexdigest()


def _threshold(manifest: Manifest, options: AnalysisOptions) -> tuple[float, str]:
    try:
        return resolve_threshold(manifest, options.threshold, options.target_fpr)
    except KeyError as exc:
        raise BadInput("unknown_operating_point", str(exc).strip("'\"")) from None
    except ValueError as exc:
        raise BadInput("bad_threshold", str(exc)) from None
