"""The gRPC door: ``fsfm.v1.FaceSecurity`` (proto/fsfm/v1/analysis.proto, docs/grpc.md) over the
analysis core, with standard health checking, reflection, optional TLS and optional API keys.

A thin translation, like the REST door: each image, video or stream frame becomes one
``AnalysisRequest`` (``service/grpc_messages.py`` translates) and one ``AnalysisCore.analyze`` call;
its ``Report`` comes back as protobuf. The door adds only what belongs to gRPC:

- Deadlines: each request or frame gets min(the client's remaining deadline, ``request_timeout_s``).
  The core answers that deadline; a client's cancellation (or its own deadline) cancels the
  handler, and with it the core call, whose faces then leave the batcher's queue.
- Streams (``Analyze``): one core stream per call (its running aggregate and its face tracks live in
  the core; a frame's ``index`` and ``time_s`` go in with it, for its tracks' segments). Frames
  are read, analysed and answered in order through a small pipeline of ``STREAM_PIPELINE_DEPTH``
  frames (so one stream's consecutive frames can share batches). A frame is read only when a
  pipeline slot is free, and a slot frees only when its result has been written to the client. A
  client that reads slowly therefore stops its own stream's reading, and through HTTP/2 flow
  control its sending; nothing is buffered without bound, and other streams are not affected.
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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.auth import API_KEY_HEADER, ApiKeys
from service.core import AnalysisCore, AnalysisOptions, AnalysisRequest, Report, RequestContext
from service.errors import AnalysisError, BadInput, DeadlineExceeded, InferenceFailed, Overloaded
from service.grpc_messages import (
    aggregate_message,
    analysis_message,
    analysis_options,
    error_message,
    image_input,
    models_message,
    options_error,
    track_aggregates,
    video_message,
)
from service.grpc_stubs import SERVICE_NAME, pb, pb_grpc
from service.media import IMAGE_REASONS
from service.settings import Settings
from service.startup import StartupError, check_tls

log = logging.getLogger("fsfm.service.grpc")

TRANSPORT = "grpc"
STREAM_PIPELINE_DEPTH = 4  # frames of one stream analysed or waiting to be written, at most
READINESS_POLL_S = 0.25  # how often the health status follows the core's readiness
REASON_KEY = "fsfm-error-reason"
RETRY_AFTER_KEY = "retry-after-s"
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
OPEN_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1})  # no API key needed
IMAGES_ONLY = ("image",)  # ``Image.encoded`` takes images; videos go to AnalyzeVideo
VIDEOS_ONLY = ("video",)
# A frame's own failures: the stream answers them in the frame's result and goes on.
_FRAME_FAILURES = (DeadlineExceeded, Overloaded, InferenceFailed)
_FRAME_REASONS = IMAGE_REASONS | {"missing_image"}
INTERNAL_ERROR = InferenceFailed("internal_error", "the server failed to answer the request")  # as REST's 500


def _frame_failure(error: AnalysisError) -> bool:
    return isinstance(error, _FRAME_FAILURES) or error.reason in _FRAME_REASONS


async def abort(context: grpc.aio.ServicerContext, error: AnalysisError) -> NoReturn:
    """End the call with the error's status; its reason (and retry delay) go in trailing metadata."""
    metadata = [(REASON_KEY, error.reason)]
    if isinstance(error, Overloaded):
        metadata.append((RETRY_AFTER_KEY, str(max(1, round(error.retry_after_s)))))
    await context.abort(grpc.StatusCode[error.grpc_code], error.message, trailing_metadata=tuple(metadata))


class FaceSecurityServicer(pb_grpc.FaceSecurityServicer):
    def __init__(self, core: AnalysisCore, settings: Settings) -> None:
        self.core = core
        self.settings = settings

    # ---- unary calls ---------------------------------------------------------------------------

    async def AnalyzeImage(
        self, request: pb.AnalyzeImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImageAnalysis:
        return analysis_message(await _answer(context, self._image_report(request, self._context(context))))

    async def AnalyzeVideo(
        self, request: pb.AnalyzeVideoRequest, context: grpc.aio.ServicerContext
    ) -> pb.VideoAnalysis:
        return video_message(await _answer(context, self._video_report(request, self._context(context))))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return models_message(self.core.listing())

    # ---- the stream ----------------------------------------------------------------------------

    async def Analyze(
        self, request_iterator: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FrameResult]:
        """Frames in, results out, in order; see the module docstring for the pipeline."""
        try:
            stream_id = self.core.open_stream()
        except AnalysisError as exc:
            await abort(context, exc)
        slots = asyncio.Semaphore(STREAM_PIPELINE_DEPTH)
        queued: asyncio.Queue[asyncio.Future[pb.FrameResult] | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_frames(request_iterator, context, stream_id, slots, queued))
        self.core.metrics.active_streams.inc()
        item: asyncio.Future | None = None
        try:
            while (item := await queued.get()) is not None:
                yield await item  # a stream-ending AnalysisError is raised here
                slots.release()
        except AnalysisError as exc:
            await abort(context, exc)
        except Exception:  # noqa: BLE001  as in ``_answer``
            log.exception("Analyze failed")
            await abort(context, INTERNAL_ERROR)
        finally:
            self.core.metrics.active_streams.dec()
            await _cancel(reader, item, queued)
            self.core.close_stream(stream_id)

    async def _read_frames(
        self,
        requests: AsyncIterator[pb.Frame],
        context: grpc.aio.ServicerContext,
        stream_id: str,
        slots: asyncio.Semaphore,
        queued: asyncio.Queue,
    ) -> None:
        """Read a frame when a slot is free and start its analysis, in order; the last item is
        None, or a future holding the error that ends the stream."""
        first: pb.AnalysisOptions | None = None
        options: AnalysisOptions | None = None
        try:
            sequence = 0
            while True:
                await slots.acquire()
                if (frame := await anext(requests, None)) is None:
                    break
                if first is None:
                    first, options = frame.options, await self._options(frame.options, self._context(context))
                elif frame.HasField("options") and frame.options != first:
                    changed = BadInput("options_changed", "a stream's options are set by its first frame and fixed")
                    raise await self.core.refused(options, self._context(context), changed)
                assert options is not None
                frame_context = replace(
                    self._context(context, stream_id, sequence), index=frame.index, time_s=frame.time_s
                )
                queued.put_nowait(asyncio.create_task(self._frame(frame, options, frame_context)))
                sequence += 1
        except Exception as exc:  # noqa: BLE001  delivered to the writer, in order, which ends the call
            failed: asyncio.Future = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            queued.put_nowait(failed)
        else:
            queued.put_nowait(None)

    async def _frame(self, frame: pb.Frame, options: AnalysisOptions, context: RequestContext) -> pb.FrameResult:
        """One frame's result; errors that are not the frame's own are raised (they end the stream)."""
        result = pb.FrameResult(sequence=context.sequence, index=frame.index, time_s=frame.time_s)
        try:
            report = await self._analyze_image(frame.image, options, context)
        except AnalysisError as exc:
            if not _frame_failure(exc):
                raise
            assert context.stream_id is not None
            result.error.CopyFrom(error_message(exc))
            snapshot = self.core.failed_frame_aggregate(context.stream_id, context.sequence)
            result.aggregate.CopyFrom(aggregate_message(snapshot))
            result.tracks.extend(track_aggregates(snapshot))
            return result
        assert report.aggregate is not None
        result.analysis.CopyFrom(analysis_message(report))
        result.aggregate.CopyFrom(aggregate_message(report.aggregate))
        result.tracks.extend(track_aggregates(report.aggregate))
        return result

    # ---- shared steps ----------------------------------------------------------------------------

    def _context(
        self, context: grpc.aio.ServicerContext, stream_id: str | None = None, sequence: int = 0
    ) -> RequestContext:
        """The request's deadline: the client's or ``request_timeout_s``, the sooner."""
        budget = self.settings.request_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        return RequestContext(TRANSPORT, time.monotonic() + budget, stream_id=stream_id, sequence=sequence)

    async def _options(
        self, message: pb.AnalysisOptions, context: RequestContext, fps: float | None = None, max_frames: int = 0
    ) -> AnalysisOptions:
        options = analysis_options(message, fps, max_frames)
        if error := options_error(message):
            raise await self.core.refused(options, context, error)
        return options

    async def _image_report(self, request: pb.AnalyzeImageRequest, context: RequestContext) -> Report:
        options = await self._options(request.options, context)
        return await self._analyze_image(request.image, options, context)

    async def _video_report(self, request: pb.AnalyzeVideoRequest, context: RequestContext) -> Report:
        fps = request.fps if request.HasField("fps") else None
        options = await self._options(request.options, context, fps, request.max_frames)
        return await self.core.analyze(AnalysisRequest(options, context, media=request.video, accept=VIDEOS_ONLY))

    async def _analyze_image(self, image: pb.Image, options: AnalysisOptions, context: RequestContext) -> Report:
        try:
            data = image_input(image, self.settings.image_limits())
        except AnalysisError as exc:
            raise await self.core.refused(options, context, exc) from None
        if isinstance(data, bytes):
            return await self.core.analyze(AnalysisRequest(options, context, media=data, accept=IMAGES_ONLY))
        return await self.core.analyze(AnalysisRequest(options, context, frames=data))


async def _answer(context: grpc.aio.ServicerContext, work: Awaitable[Report]) -> Report:
    """A unary call's report; its failure ends the call with the error's status (an unexpected one
    with INTERNAL and a plain message, as REST's 500: never gRPC's own "Unexpected <class ...>")."""
    try:
        return await work
    except AnalysisError as exc:
        await abort(context, exc)
    except Exception:  # noqa: BLE001  logged with its traceback; the client gets no internals
        log.exception("a unary call failed")
        await abort(context, INTERNAL_ERROR)


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


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Calls need an accepted ``x-api-key`` metadata value; health checking and reflection stay open."""

    def __init__(self, keys: ApiKeys) -> None:
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.split("/")[1] in OPEN_SERVICES:
            return handler
        key = next((value for name, value in details.invocation_metadata or () if name == API_KEY_HEADER), None)
        try:
            self._keys.check(key, "metadata")
        except AnalysisError as exc:
            return _refusal(handler, exc)
        return handler


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
    pair = check_tls(settings)
    return grpc.ssl_server_credentials([pair]) if pair else None


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Server reflection under both names clients ask for: ``grpc.reflection.v1alpha`` (grpcio-reflection's
    servicer) and ``grpc.reflection.v1``, whose messages are the same fields with the same numbers
    (v1 renamed the package only), so the same servicer answers it through a generic handler."""
    services = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(services, server)
    servicer = reflection.aio.ReflectionServicer(services)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": method}),)
    )


async def start_grpc_server(core: AnalysisCore, settings: Settings) -> tuple[grpc.aio.Server, int]:
    """Bind ``settings.host:settings.grpc_port`` (0: any free port) and start serving FaceSecurity,
    health and reflection; returns the server and the bound port. The caller stops the server."""
    limit = settings.max_grpc_message_bytes
    keys = ApiKeys(settings.api_keys)
    server = grpc.aio.server(
        interceptors=[ApiKeyInterceptor(keys)] if keys else [],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a taken port is an error, not a silently shared one
        ],
    )
    pb_grpc.add_FaceSecurityServicer_to_server(FaceSecurityServicer(core, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _enable_reflection(server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    credentials = _credentials(settings)
    try:  # grpcio raises RuntimeError, older versions returned 0
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot bind the gRPC server to {address}: the address is in use or not available")
    await server.start()
    follower = asyncio.create_task(_follow_readiness(core, health_servicer, server), name="grpc-health")
    _background.add(follower)
    follower.add_done_callback(_background.discard)
    log.info("gRPC %s on %s (%s)", SERVICE_NAME, f"{host}:{port}", "TLS" if credentials else "plaintext")
    return server, port
