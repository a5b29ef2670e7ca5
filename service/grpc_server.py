"""The gRPC door: ``fsfm.v1.FaceSecurity`` (proto/fsfm/v1/analysis.proto) over the analysis core,
with standard health checking, reflection, optional TLS and optional API keys.

A thin translation, like the REST door: a request's image (encoded bytes, decoded here off the
event loop, or raw RGB pixels) and options go to ``AnalysisCore.analyze_frames``; its ``Report``
comes back as protobuf. The door adds only what belongs to gRPC:

- Deadlines: each image or frame gets min(the client's remaining deadline, ``request_timeout_s``).
  The core drops its queued faces when that passes; a client's cancellation (or its own deadline)
  cancels the handler, and with it the core call, whose faces then leave the batcher's queue.
- Streams (``Analyze``): frames are read, analysed and answered in order through a small pipeline
  of ``STREAM_PIPELINE_DEPTH`` frames (so one stream's consecutive frames can share batches). A
  frame is read only when a pipeline slot is free, and a slot frees only when its result has been
  written to the client. A client that reads slowly therefore stops its own stream's reading, and
  through HTTP/2 flow control its sending; nothing is buffered without bound, and other streams
  are not affected.
- Errors of a stream: a frame's own failure (unusable image, its deadline, overload, an engine
  failure) becomes that frame's ``FrameResult.error`` and the stream goes on. Failures that would
  repeat on every frame (unknown task or model, bad threshold, changed options, service not ready
  or draining) end the stream with their status. Unary calls end with the status in every case.
  Statuses carry the stable reason in the trailing metadata ``fsfm-error-reason``.
- Health (``grpc.health.v1``): SERVING while ``core.readiness()`` says ready, NOT_SERVING while
  loading or draining; it follows the core by itself (polled every ``READINESS_POLL_S``), so the
  server process has nothing to flip.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fsfm.analysis import FaceResult, Verdict
from fsfm.imaging import ImageError, ImageLimits, check_size, decode_image
from fsfm.package.manifest import TASKS, Manifest
from service.errors import Unauthorized
from service.core import AnalysisCore, AnalysisOptions, FrameReport, Report, image_error, overall_verdict
from service.errors import AnalysisError, BadInput, DeadlineExceeded, InferenceFailed, Overloaded
from service.grpc_stubs import SERVICE_NAME, pb, pb_grpc
from service.settings import Settings

log = logging.getLogger("fsfm.service.grpc")

TRANSPORT = "grpc"
AGGREGATE_WINDOW_FRAMES = 30  # the analysed frames a stream's aggregate scores cover
STREAM_PIPELINE_DEPTH = 4  # frames of one stream analysed or waiting to be written, at most
READINESS_POLL_S = 0.25  # how often the health status follows the core's readiness
CORE_DEADLINE_SLACK_S = 0.25  # lets the core answer its own deadline before the door's backstop fires
REASON_KEY = "fsfm-error-reason"
RETRY_AFTER_KEY = "retry-after-s"
API_KEY_HEADER = "x-api-key"
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})  # no API key needed

_TASK_VALUES: dict[str, int] = {task: pb.Task.Value(f"TASK_{task.upper()}") for task in TASKS}
_TASK_NAMES: dict[int, str] = {value: task for task, value in _TASK_VALUES.items()}
# A frame's own failures: the stream answers them in the frame's result and goes on.
_FRAME_FAILURES = (DeadlineExceeded, Overloaded, InferenceFailed)


# ---- protobuf <-> core ------------------------------------------------------------------------


def raw_pixels(raw: pb.RawImage, limits: ImageLimits) -> np.ndarray:
    """A ``RawImage`` as an RGB uint8 (H, W, 3) array over the message's bytes (no copy)."""
    if raw.width == 0 or raw.height == 0:
        raise BadInput("bad_raw_image", f"raw image size {raw.width}x{raw.height}: width and height must be > 0")
    check_size(raw.width, raw.height, limits)
    expected = raw.width * raw.height * 3
    if len(raw.rgb) != expected:
        raise BadInput(
            "bad_raw_image",
            f"a {raw.width}x{raw.height} raw image needs {expected} bytes of packed RGB; got {len(raw.rgb)}",
        )
    return np.frombuffer(raw.rgb, np.uint8).reshape(raw.height, raw.width, 3)


def model_info(manifest: Manifest) -> pb.ModelInfo:
    task = _TASK_VALUES[manifest.task]
    return pb.ModelInfo(name=manifest.name, version=manifest.version, task=task, demo=manifest.demo)


def face_message(result: FaceResult) -> pb.Face:
    x1, y1, x2, y2 = result.face.box.tolist()
    face = pb.Face(
        box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2),
        landmarks=[pb.Point(x=x, y=y) for x, y in result.face.landmarks.tolist()],
        detection_score=float(result.face.score),
        judged=result.score is not None,
        reason=result.skip_reason or "",
    )
    if result.score is not None:
        face.score, face.label, face.threshold = result.score, result.label, result.threshold
    return face


def verdict_message(verdict: Verdict) -> pb.Verdict:
    message = pb.Verdict(label=verdict.label or "", reason=verdict.reason or "")
    if verdict.score is not None:
        message.score = verdict.score
    return message


def analysis_message(report: Report) -> pb.ImageAnalysis:
    """A one-image ``Report`` as ``ImageAnalysis``."""
    return pb.ImageAnalysis(
        request_id=report.request_id,
        model=model_info(report.model),
        threshold=report.threshold,
        threshold_source=report.threshold_source,
        faces=[face_message(face) for face in report.frames[0].faces],
        verdict=verdict_message(report.verdict),
        timing_ms=report.timing_ms,
    )


def error_message(error: AnalysisError) -> pb.Error:
    return pb.Error(code=error.grpc_code, reason=error.reason, message=error.message)


async def abort(context: grpc.aio.ServicerContext, error: AnalysisError) -> NoReturn:
    """End the call with the error's status; its reason (and retry delay) go in trailing metadata."""
    metadata = [(REASON_KEY, error.reason)]
    if isinstance(error, Overloaded):
        metadata.append((RETRY_AFTER_KEY, str(max(1, round(error.retry_after_s)))))
    await context.abort(grpc.StatusCode[error.grpc_code], error.message, trailing_metadata=tuple(metadata))


# ---- the stream's aggregate -------------------------------------------------------------------


class StreamAggregate:
    """The running aggregate of one Analyze stream: counts over the whole stream, scores over the
    window of its last ``window`` analysed frames. The verdict is the core's video verdict (mean of
    each frame's most suspicious face) over the window, so a stream and an uploaded video agree."""

    def __init__(self, window: int = AGGREGATE_WINDOW_FRAMES) -> None:
        self.frames_seen = 0
        self.frames_failed = 0
        self.faces_seen = 0
        self._window: deque[FrameReport] = deque(maxlen=window)
        self._scale: tuple[Manifest, float] | None = None  # the stream's model and threshold

    def add(self, report: Report) -> None:
        frame = report.frames[0]
        self.frames_seen += 1
        self.faces_seen += len(frame.faces)
        self._window.append(frame)
        self._scale = (report.model, report.threshold)

    def add_failure(self) -> None:
        self.frames_seen += 1
        self.frames_failed += 1

    @property
    def window_frames(self) -> int:
        return len(self._window)

    def window_scores(self) -> list[float]:
        return [face.score for frame in self._window for face in frame.faces if face.score is not None]

    def verdict(self) -> Verdict:
        if self._scale is None or not self._window:
            return Verdict(None, None, "no_face")
        manifest, threshold = self._scale
        return overall_verdict(list(self._window), manifest, threshold, is_video=True)

    def message(self) -> pb.Aggregate:
        scores = self.window_scores()
        aggregate = pb.Aggregate(
            frames_seen=self.frames_seen,
            frames_failed=self.frames_failed,
            faces_seen=self.faces_seen,
            window_frames=self.window_frames,
            window_faces=len(scores),
            verdict=verdict_message(self.verdict()),
        )
        if scores:
            aggregate.mean_score, aggregate.max_score = float(np.mean(scores)), max(scores)
        return aggregate


# ---- the service ------------------------------------------------------------------------------

FrameOutcome = Report | AnalysisError  # a frame's analysis, or its own failure


class FaceSecurityServicer(pb_grpc.FaceSecurityServicer):
    def __init__(self, core: AnalysisCore, settings: Settings) -> None:
        self.core = core
        self.settings = settings

    # ---- unary calls ---------------------------------------------------------------------------

    async def AnalyzeImage(
        self, request: pb.AnalyzeImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageAnalysis:
        deadline = self._deadline(context)
        try:
            options = self._options(request.options)
            rgb, decode_s = await self._read_image(request.image, options)
            report = await self._analyze(rgb, decode_s, options, 0, 0.0, deadline)
        except AnalysisError as exc:
            await abort(context, exc)
        return analysis_message(report)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        repository = self.core.repository
        defaults = {repository.default_for_task(t).manifest.ref for t in self.core.tasks()} if repository else set()
        return pb.ListModelsResponse(models=[
            pb.ModelEntry(
                model=model_info(served.manifest),
                default_for_task=ref in defaults,
                default_threshold=served.manifest.thresholds.default,
                manifest_json=served.manifest.model_dump_json(),
            )
            for ref, served in sorted(self.core.models.items())
        ])

    # ---- the stream ----------------------------------------------------------------------------

    async def Analyze(
        self, request_iterator: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        """Frames in, results out, in order; see the module docstring for the pipeline."""
        slots = asyncio.Semaphore(STREAM_PIPELINE_DEPTH)
        queued: asyncio.Queue[asyncio.Future[tuple[pb.Frame, FrameOutcome]] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_frames(request_iterator, context, slots, queued))
        aggregate = StreamAggregate()
        self.core.metrics.active_streams.inc()
        item: asyncio.Future | None = None
        try:
            sequence = 0
            while (item := await queued.get()) is not None:
                frame, outcome = await item  # a stream-ending AnalysisError is raised here
                yield self._frame_result(sequence, frame, outcome, aggregate)
                sequence += 1
                slots.release()
        except AnalysisError as exc:
            await abort(context, exc)
        finally:
            self.core.metrics.active_streams.dec()
            await _cancel(reader, item, queued)

    async def _read_frames(
        self,
        requests: AsyncIterator[pb.Frame],
        context: grpc.aio.ServicerContext,
        slots: asyncio.Semaphore,
        queued: asyncio.Queue,
    ) -> None:
        """Read a frame when a slot is free and start its analysis, in order; the last item is
        None, or a future holding the error that ends the stream."""
        first: pb.AnalysisOptions | None = None
        options: AnalysisOptions | None = None
        try:
            while True:
                await slots.acquire()
                if (frame := await anext(requests, None)) is None:
                    break
                if first is None:
                    first, options = frame.options, self._options(frame.options)
                elif frame.HasField("options") and frame.options != first:
                    raise self._refused(
                        options, BadInput("options_changed", "a stream's options are set by its first frame and fixed")
                    )
                assert options is not None
                queued.put_nowait(asyncio.create_task(self._frame(frame, options, self._deadline(context))))
        except Exception as exc:  # noqa: BLE001  delivered to the writer, in order, which ends the call
            failed: asyncio.Future = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            queued.put_nowait(failed)
        else:
            queued.put_nowait(None)

    async def _frame(self, frame: pb.Frame, options: AnalysisOptions, deadline: float) -> tuple[pb.Frame, FrameOutcome]:
        """One frame's outcome; errors that are not the frame's own are raised (they end the stream)."""
        try:
            rgb, decode_s = await self._read_image(frame.image, options)
        except AnalysisError as exc:
            return frame, exc
        try:
            return frame, await self._analyze(rgb, decode_s, options, frame.index, frame.time_s, deadline)
        except _FRAME_FAILURES as exc:
            return frame, exc

    @staticmethod
    def _frame_result(
        sequence: int, frame: pb.Frame, outcome: FrameOutcome, aggregate: StreamAggregate
    ) -> pb.FrameResult:
        result = pb.FrameResult(sequence=sequence, index=frame.index, time_s=frame.time_s)
        if isinstance(outcome, AnalysisError):
            aggregate.add_failure()
            result.error.CopyFrom(error_message(outcome))
        else:
            aggregate.add(outcome)
            result.analysis.CopyFrom(analysis_message(outcome))
        result.aggregate.CopyFrom(aggregate.message())
        return result

    # ---- shared steps ----------------------------------------------------------------------------

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """A ``time.monotonic()`` instant: the client's deadline or ``request_timeout_s``, the sooner."""
        budget = self.settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        return time.monotonic() + budget

    def _options(self, message: pb.AnalysisOptions) -> AnalysisOptions:
        task = _TASK_NAMES.get(message.task)
        options = AnalysisOptions(
            task=task or "unspecified",
            model=message.model or None,
            threshold=message.threshold if message.HasField("threshold") else None,
            target_fpr=message.target_fpr if message.HasField("target_fpr") else None,
        )
        if task is None:
            names = ", ".join(name for name in pb.Task.keys() if name != "TASK_UNSPECIFIED")
            raise self._refused(options, BadInput("missing_task", f"set options.task to one of {names}"))
        return options

    async def _read_image(self, image: pb.Image, options: AnalysisOptions) -> tuple[np.ndarray, float]:
        """The image as RGB pixels, and the seconds decoding took."""
        started = time.monotonic()
        try:
            rgb = await self._pixels(image)
        except AnalysisError as exc:
            raise self._refused(options, exc) from None
        return rgb, time.monotonic() - started

    async def _pixels(self, image: pb.Image) -> np.ndarray:
        limits = self.settings.image_limits()
        kind = image.WhichOneof("data")
        try:
            if kind == "encoded":
                return await asyncio.to_thread(decode_image, image.encoded, limits)
            if kind == "raw":
                return raw_pixels(image.raw, limits)
        except ImageError as exc:
            raise image_error(exc) from None
        raise BadInput("missing_image", "set image.encoded (JPEG, PNG or WebP bytes) or image.raw (RGB pixels)")

    async def _analyze(
        self, rgb: np.ndarray, decode_s: float, options: AnalysisOptions, index: int, time_s: float, deadline: float
    ) -> Report:
        """The core's analysis of one image."""
        try:  # the core drops queued faces at the deadline itself; this is the backstop for slow stages
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + CORE_DEADLINE_SLACK_S):
                return await self.core.analyze_frames(
                    [(index, time_s, rgb)], options, TRANSPORT, deadline, decode_s, is_video=False
                )
        except TimeoutError:
            raise DeadlineExceeded() from None

    def _refused(self, options: AnalysisOptions, error: AnalysisError) -> AnalysisError:
        """Count a failure the door finds before the core sees the request (the core counts its own)."""
        labels = (options.model or "default", options.task, TRANSPORT, error.reason)
        self.core.metrics.request_failure.labels(*labels).inc()
        return error


async def _cancel(reader: asyncio.Task, current: asyncio.Future | None, queued: asyncio.Queue) -> None:
    """Stop reading and cancel the frames in flight (``current``: the one being awaited, if any):
    their faces leave the batcher's queue."""
    pending: list[asyncio.Future] = [reader, *([current] if current is not None else [])]
    while not queued.empty():
        if (item := queued.get_nowait()) is not None:
            pending.append(item)
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


# ---- API keys, health, the server -------------------------------------------------------------


def key_accepted(key: str, accepted: list[bytes]) -> bool:
    """Every accepted key is compared, each in constant time."""
    matched = False
    for candidate in accepted:
        matched |= hmac.compare_digest(key.encode(), candidate)
    return matched


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Calls need an accepted ``x-api-key`` metadata value; health checking and reflection stay open."""

    def __init__(self, keys: list[str]) -> None:
        self._accepted = [key.encode() for key in keys]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.split("/")[1] in OPEN_SERVICES:
            return handler
        key = next((value for name, value in details.invocation_metadata or () if name == API_KEY_HEADER), None)
        if key is None:
            error = Unauthorized("missing_api_key", f"send an API key in the {API_KEY_HEADER} metadata")
        elif not key_accepted(key, self._accepted):
            error = Unauthorized("invalid_api_key", f"the {API_KEY_HEADER} metadata does not hold an accepted key")
        else:
            return handler
        return _refusal(handler, error)


_HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _refusal(handler: grpc.RpcMethodHandler, error: AnalysisError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``error``."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await abort(context, error)

    factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


async def _follow_readiness(core: AnalysisCore, servicer: health.aio.HealthServicer, server: grpc.aio.Server) -> None:
    """Keep the health status of the server ("") and of FaceSecurity equal to the core's readiness,
    until the server stops."""
    current = None
    while True:
        ready, _ = core.readiness()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != current:
            for service in ("", SERVICE_NAME):
                await servicer.set(service, status)
            current = status
        timed_out = await server.wait_for_termination(READINESS_POLL_S)
        if not timed_out:
            return


_background: set[asyncio.Task] = set()  # strong references to the readiness followers


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.grpc_tls_cert is None and settings.grpc_tls_key is None:
        return None
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        raise ValueError("gRPC TLS needs both FSFM_GRPC_TLS_CERT and FSFM_GRPC_TLS_KEY")
    pair = (settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())
    return grpc.ssl_server_credentials([pair])


async def start_grpc_server(core: AnalysisCore, settings: Settings) -> tuple[grpc.aio.Server, int]:
    """Bind ``settings.host:settings.grpc_port`` (0: any free port) and start serving FaceSecurity,
    health and reflection; returns the server and the bound port. The caller stops the server."""
    limit = settings.max_grpc_message_bytes
    server = grpc.aio.server(
        interceptors=[ApiKeyInterceptor(settings.api_keys)] if settings.api_keys else [],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a taken port is an error, not a silently shared one
        ],
    )
    pb_grpc.add_FaceSecurityServicer_to_server(FaceSecurityServicer(core, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    credentials = _credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()
    follower = asyncio.create_task(_follow_readiness(core, health_servicer, server), name="grpc-health")
    _background.add(follower)
    follower.add_done_callback(_background.discard)
    log.info("gRPC %s on %s (%s)", SERVICE_NAME, f"{host}:{port}", "TLS" if credentials else "plaintext")
    return server, port
