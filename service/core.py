"""The analysis core behind both doors: decode -> detect -> crop -> batcher -> per-face results.

REST and gRPC are thin translations of this one object; neither holds logic the other lacks. The
inference backend behind ``ServedModel.backend`` is the in-process ``DynamicBatcher`` or, in the
scaled-out mode, the Redis queue; the core does not know which.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fsfm.analysis import FaceResult, PreparedFace, Verdict, judge, prepare_faces, verdict
from fsfm.face.detector import FaceDetector, create_detector
from fsfm.imaging import ImageError, decode_image
from fsfm.package import ModelPackage, ModelRepository, PackageError
from fsfm.package.manifest import TASKS, Manifest
from fsfm.scoring import label_for, resolve_threshold
from service.batcher import DynamicBatcher, InferenceResult
from service.engines import load_engine
from service.errors import AnalysisError, BadInput, ModelNotFound, TooLarge, Unavailable, UnsupportedMedia
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("fsfm.service")


class InferenceBackend(Protocol):
    """Where a model's faces go to be inferred: the in-process ``DynamicBatcher`` (``queue=local``)
    or the Redis Streams queue to remote workers (``queue=redis://...``)."""

    async def infer(self, tensors: np.ndarray, deadline: float | None = None) -> InferenceResult: ...

    @property
    def pending(self) -> int: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health_error(self) -> str | None:
        """Why the backend cannot take work right now (e.g. the queue is unreachable), or None."""
        ...


@dataclass
class ServedModel:
    package: ModelPackage
    backend: InferenceBackend

    @property
    def manifest(self) -> Manifest:
        return self.package.manifest

    @property
    def label(self) -> str:
        return self.manifest.ref


@dataclass
class AnalysisOptions:
    """What a request may choose; both doors build one from their parameters."""

    task: str
    model: str | None = None
    threshold: float | None = None
    target_fpr: float | None = None


@dataclass
class FrameReport:
    index: int
    time_s: float
    faces: list[FaceResult]


@dataclass
class Report:
    """One answered request: an image (one frame) or a video (several)."""

    request_id: str
    model: Manifest
    threshold: float
    threshold_source: str
    frames: list[FrameReport]
    verdict: Verdict
    timing_ms: dict[str, float] = field(default_factory=dict)
    is_video: bool = False


_IMAGE_ERRORS: dict[str, type[AnalysisError]] = {
    "empty": BadInput,
    "corrupt": BadInput,
    "unsupported_type": UnsupportedMedia,
    "too_large": TooLarge,
}


def image_error(exc: ImageError) -> AnalysisError:
    return _IMAGE_ERRORS.get(exc.code, BadInput)(exc.code, str(exc))


class AnalysisCore:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.models: dict[str, ServedModel] = {}
        self.repository: ModelRepository | None = None
        self.detector: FaceDetector | None = None
        self.ready = False
        self.draining = False
        self.in_flight = 0
        # Decode, detect and crop run here, off the event loop; engines have their own threads.
        self._cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="preprocess")
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the repository's latest versions, warm each engine up, start the batchers."""
        loop = asyncio.get_running_loop()
        self.detector = await loop.run_in_executor(self._cpu, create_detector, self.settings.detector_config())
        self.repository = await loop.run_in_executor(self._cpu, ModelRepository, self.settings.models)
        for folder, error in self.repository.errors.items():
            log.error("skipping model package %s: %s", folder, error)
        for package in self.repository.packages:
            self.models[package.manifest.ref] = await loop.run_in_executor(self._cpu, self._load, package)
        for model in self.models.values():
            model.backend.start()
            self.metrics.model_ready.labels(model.label).set(1)
        self.ready = True
        log.info("serving %s (%s)", ", ".join(self.models) or "no models", self.settings.precision)

    def _load(self, package: ModelPackage) -> ServedModel:
        """Local queue: an engine, warmed up, behind a dynamic batcher. Redis queue: the workers hold
        the engines; this node only needs the manifest and a client of the model's stream."""
        if self.settings.queue != "local":
            from service.redis_queue import RedisInferenceClient

            return ServedModel(package, RedisInferenceClient(package.manifest, self.settings, self.metrics))
        batcher = DynamicBatcher(
            load_engine(package, self.settings),
            package.manifest.ref,
            self.metrics,
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_ms=self.settings.max_queue_delay_ms,
            max_queue_size=self.settings.max_queue_size,
        )
        return ServedModel(package, batcher)

    async def drain(self, grace_s: float) -> bool:
        """Refuse new work, let in-flight requests finish (up to ``grace_s``). True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except (asyncio.TimeoutError, TimeoutError):
            return False

    async def stop(self) -> None:
        self.ready = False
        for model in self.models.values():
            await model.backend.stop()
            self.metrics.model_ready.labels(model.label).set(0)
        self._cpu.shutdown(wait=False, cancel_futures=True)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """(ready, details) for /readyz and the gRPC health service."""
        backend_errors = {
            label: error for label, model in self.models.items() if (error := model.backend.health_error())
        }
        details: dict[str, object] = {
            "models_loaded": self.ready,
            "draining": self.draining,
            "models": sorted(self.models),
            "queue": self.settings.queue if self.settings.queue == "local" else "redis",
            "precision": self.settings.precision,
        }
        if backend_errors:
            details["backend_errors"] = backend_errors
        if self.repository is not None and self.repository.errors:
            details["skipped_packages"] = self.repository.errors
        return self.ready and not self.draining and not backend_errors, details

    # ---- model choice ------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        return sorted({m.manifest.task for m in self.models.values()})

    def resolve(self, options: AnalysisOptions) -> ServedModel:
        if options.task not in TASKS:
            raise BadInput("unknown_task", f"unknown task {options.task!r}; tasks: {list(TASKS)}")
        assert self.repository is not None
        try:
            package = (
                self.repository.get(options.model) if options.model else self.repository.default_for_task(options.task)
            )
        except PackageError as exc:
            raise ModelNotFound("model_not_found", str(exc)) from None
        if package.manifest.task != options.task:
            raise BadInput(
                "wrong_task", f"model {package.manifest.ref} is a {package.manifest.task} model, not {options.task}"
            )
        return self.models[package.manifest.ref]

    # ---- analysis ----------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self.ready:
            raise Unavailable("not_ready", "models are still loading")
        if self.draining:
            raise Unavailable("draining", "the service is shutting down")

    async def analyze_image(
        self, data: bytes, options: AnalysisOptions, transport: str, deadline: float | None = None
    ) -> Report:
        """Analyse encoded image bytes (JPEG/PNG/WebP)."""
        return await self._tracked(self._image(data, options, deadline), options, transport)

    async def analyze_frames(
        self,
        frames: list[tuple[int, float, np.ndarray]],
        options: AnalysisOptions,
        transport: str,
        deadline: float | None = None,
        decode_s: float = 0.0,
        is_video: bool = True,
    ) -> Report:
        """Analyse decoded RGB frames ``(index, time_s, image)`` in one go: their faces share batches."""
        return await self._tracked(
            self._frames(frames, options, deadline, decode_s, is_video), options, transport
        )

    async def _tracked(self, work, options: AnalysisOptions, transport: str) -> Report:
        """Admission, in-flight accounting (for draining) and the request metrics around ``work``."""
        model_label = options.model or "default"
        try:
            self._admit()
        except AnalysisError as exc:
            work.close()
            self.metrics.request_failure.labels(model_label, options.task, transport, exc.reason).inc()
            raise
        self.in_flight += 1
        self._idle.clear()
        started = time.monotonic()
        try:
            report = await work
        except AnalysisError as exc:
            self.metrics.request_failure.labels(model_label, options.task, transport, exc.reason).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.request_failure.labels(model_label, options.task, transport, "cancelled").inc()
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        total = time.monotonic() - started
        report.timing_ms["total"] = round(total * 1000, 2)
        self.metrics.stage_duration.labels("total", report.model.ref).observe(total)
        self.metrics.request_success.labels(report.model.ref, options.task, transport).inc()
        return report

    async def _image(self, data: bytes, options: AnalysisOptions, deadline: float | None) -> Report:
        model = self.resolve(options)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            image = await loop.run_in_executor(self._cpu, decode_image, data, self.settings.image_limits())
        except ImageError as exc:
            raise image_error(exc) from None
        decode_s = time.monotonic() - t0
        self.metrics.stage_duration.labels("decode", model.label).observe(decode_s)
        return await self._frames([(0, 0.0, image)], options, deadline, decode_s, is_video=False, model=model)

    async def _frames(
        self,
        frames: list[tuple[int, float, np.ndarray]],
        options: AnalysisOptions,
        deadline: float | None,
        decode_s: float,
        is_video: bool,
        model: ServedModel | None = None,
    ) -> Report:
        model = model or self.resolve(options)
        manifest = model.manifest
        try:
            threshold, source = resolve_threshold(manifest, options.threshold, options.target_fpr)
        except KeyError as exc:
            raise BadInput("unknown_operating_point", str(exc).strip("'\"")) from None
        except ValueError as exc:
            raise BadInput("bad_threshold", str(exc)) from None
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        prepared = await loop.run_in_executor(self._cpu, self._detect_and_prepare, frames, manifest)
        detect_s = time.monotonic() - t0
        self.metrics.stage_duration.labels("detect", model.label).observe(detect_s)
        tensors = [p.tensor for faces in prepared for p in faces if p.tensor is not None]
        queue_s = infer_s = 0.0
        logits = np.zeros((0, manifest.architecture.num_classes), np.float32)
        if tensors:
            result = await model.backend.infer(np.stack(tensors), deadline)
            logits, queue_s, infer_s = result.outputs[manifest.onnx.output_name], result.queue_s, result.infer_s
            self.metrics.stage_duration.labels("queue", model.label).observe(queue_s)
            self.metrics.stage_duration.labels("infer", model.label).observe(infer_s)
        reports: list[FrameReport] = []
        offset = 0
        for (index, time_s, _), faces in zip(frames, prepared):
            judged = sum(p.tensor is not None for p in faces)
            results = judge(faces, logits[offset : offset + judged], manifest, threshold)
            offset += judged
            reports.append(FrameReport(index, time_s, results))
        overall = overall_verdict(reports, manifest, threshold, is_video)
        timing = {"decode": decode_s, "detect": detect_s, "queue": queue_s, "infer": infer_s}
        return Report(
            request_id=uuid.uuid4().hex,
            model=manifest,
            threshold=threshold,
            threshold_source=source,
            frames=reports,
            verdict=overall,
            timing_ms={k: round(v * 1000, 2) for k, v in timing.items()},
            is_video=is_video,
        )

    def _detect_and_prepare(
        self, frames: list[tuple[int, float, np.ndarray]], manifest: Manifest
    ) -> list[list[PreparedFace]]:
        assert self.detector is not None
        prepared = []
        for _, _, image in frames:
            faces = self.detector.detect(image)
            self.metrics.faces_per_input.observe(len(faces))
            prepared.append(prepare_faces(image, faces, manifest))
        return prepared


def overall_verdict(frames: list[FrameReport], manifest: Manifest, threshold: float, is_video: bool) -> Verdict:
    """Image: the most suspicious face. Video: the mean over frames of each frame's most
    suspicious face (FSFM's video score is the mean of frame scores)."""
    if not is_video:
        return verdict(frames[0].faces, manifest, threshold)
    per_frame = [verdict(f.faces, manifest, threshold) for f in frames]
    scores = [v.score for v in per_frame if v.score is not None]
    if not scores:
        any_face = any(f.faces for f in frames)
        return Verdict(None, None, "no_judged_face" if any_face else "no_face")
    mean = float(np.mean(scores))
    return Verdict(label_for(mean, threshold, manifest), mean)
