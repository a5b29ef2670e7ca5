"""The REST door: FastAPI over the analysis core.

A thin translation: the request's upload and parameters become ``AnalysisOptions`` and bytes (or,
for a video, decoded frames), the core's ``Report`` becomes JSON. Everything the door adds is about
HTTP itself: the upload (multipart, read as a stream with a byte limit, kept in memory, never on
disk), content sniffing, API keys, CORS, and one JSON error shape for every failure.

Routes: ``POST /v1/{task}`` for every task (deepfake, liveness, diffusion), generated from one
handler; a task without a loaded model answers 404 ``task_not_served``. ``GET /v1/models``,
``/healthz``, ``/readyz``, ``/metrics``. API keys, when configured, guard ``/v1/*``; the health,
readiness and metrics endpoints and the OpenAPI document stay open for probes and scrapers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, Awaitable, Callable, Literal

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from fsfm.imaging import sniff_image_type
from fsfm.package.manifest import TASKS, Manifest
from service.core import AnalysisCore, AnalysisOptions, Report
from service.errors import (
    AnalysisError, InvalidRequest, Unauthorized, BadInput, DeadlineExceeded, ModelNotFound, Overloaded, TooLarge, UnsupportedMedia,
)
from service.settings import Settings
from service.video import decode_video, sniff_video_type

log = logging.getLogger("fsfm.service.rest")

TRANSPORT = "rest"
UPLOAD_FIELD = "file"
MAX_FORM_FIELD_BYTES = 1024  # the parameters are short strings; only ``file`` carries data
CORE_DEADLINE_SLACK_S = 0.25  # lets the core answer its own deadline (and count it) before the door's fires


# ---- the API's documents ---------------------------------------------------------------------


class AnalysisParams(BaseModel):
    """What a request may choose. Each may be a query parameter or a form field, not both."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, max_length=200, description="model as `name` or `name:version` (default: the task's model)",
        examples=["tiny-deepfake:1"],
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="attack-score threshold (default: the manifest's default)"
    )
    target_fpr: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="use the manifest's operating point calibrated for this false-positive rate",
    )
    fps: float | None = Field(default=None, gt=0.0, le=120.0, description="video only: frames sampled per second")
    max_frames: int | None = Field(
        default=None, ge=1,
        description="video only: frames analysed, at most (default and ceiling: the server's max_video_frames)",
    )


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    task: Literal["deepfake", "liveness", "diffusion"]
    demo: bool = Field(description="a demo model: not fit for decisions")


class FaceOut(BaseModel):
    """One detected face. Judged faces carry ``score``, ``label`` and ``threshold``; faces that were
    not judged carry ``judged: false`` and a ``reason`` instead (e.g. ``face_too_small``)."""

    model_config = ConfigDict(extra="forbid")

    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels")
    landmarks: list[list[float]] = Field(
        min_length=5, max_length=5, description="[x, y] of left eye, right eye, nose tip, left and right mouth corner"
    )
    detection_score: float
    score: float | None = Field(default=None, description="probability of the attack class (fake / spoof)")
    label: str | None = None
    threshold: float | None = None
    judged: bool | None = Field(default=None, description="false when the face was not judged")
    reason: str | None = Field(default=None, description="why the face was not judged")


class VerdictOut(BaseModel):
    """Image: the most suspicious judged face. Video: the mean over frames of each frame's most
    suspicious face. No judged face: ``label`` and ``score`` are null and ``reason`` says why."""

    model_config = ConfigDict(extra="forbid")

    label: str | None
    score: float | None
    reason: str | None = Field(default=None, description="no_face | no_judged_face")


class FrameOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="frame number in the video")
    time_s: float
    faces: list[FaceOut]


_FACE_EXAMPLE = {
    "box": [184.2, 71.9, 272.5, 185.3],
    "landmarks": [[203.1, 101.4], [247.2, 102.8], [224.0, 126.5], [204.9, 141.0], [243.6, 141.7]],
    "detection_score": 0.9998,
    "score": 0.031264,
    "label": "real",
    "threshold": 0.5,
}
_IMAGE_EXAMPLE = {
    "request_id": "4f1c2a9e7b3d4e5f8a6b7c8d9e0f1a2b",
    "model": {"name": "fsfm-dfd", "version": 1, "task": "deepfake", "demo": False},
    "media": "image",
    "threshold": 0.5,
    "threshold_source": "default",
    "faces": [_FACE_EXAMPLE, {**{k: _FACE_EXAMPLE[k] for k in ("box", "landmarks")}, "detection_score": 0.97,
                             "judged": False, "reason": "face_too_small"}],
    "verdict": {"label": "real", "score": 0.031264},
    "timing_ms": {"decode": 3.1, "detect": 41.7, "queue": 4.9, "infer": 62.3, "total": 113.5},
}
_VIDEO_EXAMPLE = {
    **{k: v for k, v in _IMAGE_EXAMPLE.items() if k not in ("faces", "media")},
    "media": "video",
    "frames": [{"index": 0, "time_s": 0.0, "faces": [_FACE_EXAMPLE]}, {"index": 12, "time_s": 0.5, "faces": []}],
}


class AnalysisResponse(BaseModel):
    """An image's faces (``faces``) or a video's sampled frames (``frames``), and the verdict."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_IMAGE_EXAMPLE, _VIDEO_EXAMPLE]})

    request_id: str
    model: ModelRef
    media: Literal["image", "video"]
    threshold: float = Field(description="the attack-score threshold applied")
    threshold_source: str = Field(description='"default", "request", or the name of a manifest operating point')
    faces: list[FaceOut] | None = Field(default=None, description="images: every detected face")
    frames: list[FrameOut] | None = Field(default=None, description="videos: the sampled frames")
    verdict: VerdictOut
    timing_ms: dict[str, float] = Field(description="decode, detect, queue, infer, total")


class ErrorDetail(BaseModel):
    reason: str = Field(description="stable machine-readable code, e.g. corrupt, overloaded, model_not_found")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


class ModelEntry(BaseModel):
    ref: str = Field(description="name:version")
    default_for_task: bool = Field(description="requests for the task that name no model get this one")
    manifest: Manifest


class ModelsResponse(BaseModel):
    models: list[ModelEntry]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: bool
    models_loaded: bool
    draining: bool
    models: list[str]
    queue: str
    precision: str = Field(description="fp32, or int8 (each package's int8 ONNX variant)")


_ERROR_EXAMPLES: dict[int, tuple[str, str]] = {
    400: ("corrupt", "cannot decode JPEG: image file is truncated"),
    401: ("invalid_api_key", "the x-api-key header does not hold an accepted key"),
    404: ("model_not_found", "no model named 'fsfm-dfx'; models: ['fsfm-dfd', 'fsfm-fas']"),
    413: ("body_too_large", "the request body exceeds 26214400 bytes"),
    415: ("unsupported_type", "not a JPEG, PNG or WebP image, nor an MP4 or WebM video"),
    422: ("missing_file", "upload the image or video in the multipart field 'file'; got fields: ['image']"),
    429: ("overloaded", "model fsfm-dfd:1: 256 faces queued, limit 256"),
    503: ("draining", "the service is shutting down"),
    504: ("deadline_exceeded", "the request's deadline passed before it was answered"),
}


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        reason, message = _ERROR_EXAMPLES[status]
        responses[status] = {
            "model": ErrorResponse,
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"example": {"error": {"reason": reason, "message": message},
                                                         "request_id": "9b2e4c6d8f0a1b3c5d7e9f1a2b4c6d8e"}}},
        }
    if 429 in responses:
        responses[429]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return responses


def _upload_body_schema() -> dict[str, Any]:
    """The multipart body, for OpenAPI: the door parses it itself (as a bounded stream), so FastAPI
    cannot derive it from the signature."""
    properties: dict[str, Any] = {
        UPLOAD_FIELD: {"type": "string", "format": "binary",
                       "description": "JPEG, PNG or WebP image, or MP4/WebM video; the type is sniffed from the bytes"},
    }
    properties.update(AnalysisParams.model_json_schema()["properties"])
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [UPLOAD_FIELD], "properties": properties}}}}}


# ---- the upload ------------------------------------------------------------------------------


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)

    @property
    def name(self) -> str | None:
        kind, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name") if kind == b"form-data" else None
        return name.decode("utf-8", "replace") if name is not None else None


class _MultipartForm:
    """A multipart/form-data body collected in memory, part by part, as its chunks arrive."""

    def __init__(self, boundary: bytes) -> None:
        self.parts: list[_Part] = []
        self.complete = False
        self._field = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": lambda: self.parts.append(_Part()),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self.parts[-1].data.extend(data[start:end]),
            "on_end": self._end,
        })

    def _header_end(self) -> None:
        self.parts[-1].headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.complete = True

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadInput("bad_multipart", f"malformed multipart body: {exc}") from None


@dataclass
class Upload:
    data: bytes
    fields: dict[str, str]


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """The multipart body's ``file`` and parameter fields. The declared length is checked first and
    the received bytes are counted as they arrive, so an oversized body is refused without being
    buffered."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMedia(
            "not_multipart", f"send multipart/form-data with the image or video in the field {UPLOAD_FIELD!r}"
        )
    declared = request.headers.get("content-length", "")
    too_large = TooLarge("body_too_large", f"the request body exceeds {max_bytes} bytes")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    form = _MultipartForm(options[b"boundary"])
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise too_large
        form.write(chunk)
    if not form.complete:
        raise BadInput("bad_multipart", "the multipart body ends before its closing boundary")
    return _form_upload(form.parts)


def _form_upload(parts: list[_Part]) -> Upload:
    names = [part.name for part in parts]
    files = [part for part in parts if part.name == UPLOAD_FIELD]
    if len(files) != 1:
        got = "several" if files else f"got fields: {names}"
        raise InvalidRequest(
            "missing_file" if not files else "several_files",
            f"upload exactly one image or video in the multipart field {UPLOAD_FIELD!r}; {got}",
        )
    fields: dict[str, str] = {}
    for part in parts:
        if part.name == UPLOAD_FIELD:
            continue
        if part.name is None or part.name in fields or len(part.data) > MAX_FORM_FIELD_BYTES:
            raise InvalidRequest("bad_form_field", f"form field {part.name!r} is unnamed, repeated or too long")
        fields[part.name] = part.data.decode("utf-8", "replace")
    return Upload(bytes(files[0].data), fields)


def merge_params(query: AnalysisParams, form: dict[str, str], max_video_frames: int) -> AnalysisParams:
    """Query parameters and form fields, validated alike; one parameter given both ways is refused."""
    try:
        from_form = AnalysisParams.model_validate(form)
    except ValidationError as exc:
        raise InvalidRequest("invalid_parameter", _validation_message(exc.errors())) from None
    in_query = query.model_dump(exclude_none=True)
    in_form = from_form.model_dump(exclude_none=True)
    if twice := sorted(in_query.keys() & in_form.keys()):
        raise InvalidRequest("invalid_parameter", f"given both as query parameter and form field: {twice}")
    params = AnalysisParams(**in_query, **in_form)
    if params.max_frames is not None and params.max_frames > max_video_frames:
        raise InvalidRequest(
            "invalid_parameter", f"max_frames is {params.max_frames}; this server allows {max_video_frames}"
        )
    return params


def _validation_message(errors: Any) -> str:
    def where(error: dict) -> str:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        return ".".join(location) or "request"

    return "; ".join(f"{where(e)}: {e.get('msg', 'invalid')}" for e in errors)


def report_json(report: Report) -> dict[str, Any]:
    """The response document (``AnalysisResponse``) of a core report."""
    model = report.model
    body: dict[str, Any] = {
        "request_id": report.request_id,
        "model": {"name": model.name, "version": model.version, "task": model.task, "demo": model.demo},
        "media": "video" if report.is_video else "image",
        "threshold": report.threshold,
        "threshold_source": report.threshold_source,
    }
    if report.is_video:
        body["frames"] = [
            {"index": frame.index, "time_s": frame.time_s, "faces": [face.to_json() for face in frame.faces]}
            for frame in report.frames
        ]
    else:
        body["faces"] = [face.to_json() for face in report.frames[0].faces]
    body["verdict"] = report.verdict.to_json()
    body["timing_ms"] = report.timing_ms
    return body


# ---- the handlers ----------------------------------------------------------------------------


class _RestDoor:
    def __init__(self, core: AnalysisCore, settings: Settings) -> None:
        self.core = core
        self.settings = settings

    async def analyze(self, task: str, request: Request, query: AnalysisParams) -> JSONResponse:
        """Upload -> image bytes or video frames -> the core. Failures before the core (upload,
        parameters, sniffing, video decoding) are counted here; the core counts its own."""
        deadline = time.monotonic() + self.settings.request_timeout_s
        options = AnalysisOptions(task=task, model=query.model)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                analyse, options = await self._prepare(task, request, query, deadline)
        except TimeoutError:
            self._count_failure(options, "deadline_exceeded")
            raise DeadlineExceeded() from None
        except AnalysisError as exc:
            self._count_failure(options, exc.reason)
            raise
        try:  # the core drops queued faces at the deadline itself; this is the backstop for slow stages
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + CORE_DEADLINE_SLACK_S):
                report = await analyse()
        except TimeoutError:
            raise DeadlineExceeded() from None
        return JSONResponse(report_json(report), headers={"x-request-id": report.request_id})

    async def _prepare(
        self, task: str, request: Request, query: AnalysisParams, deadline: float
    ) -> tuple[Callable[[], Awaitable[Report]], AnalysisOptions]:
        """Everything before the core: the core call to make, and the options it gets."""
        if self.core.ready and task not in self.core.tasks():
            raise ModelNotFound("task_not_served", f"no {task} model is loaded; served tasks: {self.core.tasks()}")
        upload = await read_upload(request, self.settings.max_upload_bytes)
        params = merge_params(query, upload.fields, self.settings.max_video_frames)
        options = AnalysisOptions(task, params.model, params.threshold, params.target_fpr)
        data = upload.data
        if not data:
            raise BadInput("empty", f"the {UPLOAD_FIELD!r} field is empty (0 bytes)")
        if sniff_image_type(data) is not None:
            return lambda: self.core.analyze_image(data, options, TRANSPORT, deadline), options
        if sniff_video_type(data) is None:
            raise UnsupportedMedia("unsupported_type", "not a JPEG, PNG or WebP image, nor an MP4 or WebM video")
        started = time.monotonic()
        frames = await asyncio.to_thread(
            decode_video, data, self.settings.image_limits(), self.settings.max_video_seconds,
            params.max_frames or self.settings.max_video_frames, params.fps,
        )
        decode_s = time.monotonic() - started
        return lambda: self.core.analyze_frames(frames, options, TRANSPORT, deadline, decode_s), options

    def _count_failure(self, options: AnalysisOptions, reason: str) -> None:
        self.core.metrics.request_failure.labels(options.model or "default", options.task, TRANSPORT, reason).inc()

    def models(self) -> ModelsResponse:
        repository = self.core.repository
        defaults = {repository.default_for_task(t).manifest.ref for t in self.core.tasks()} if repository else set()
        return ModelsResponse(models=[
            ModelEntry(ref=ref, default_for_task=ref in defaults, manifest=served.manifest)
            for ref, served in sorted(self.core.models.items())
        ])

    def readiness(self) -> JSONResponse:
        ready, details = self.core.readiness()
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return JSONResponse({"ready": ready, **details}, status_code=status)


def _analysis_endpoint(door: _RestDoor, task: str) -> Callable[..., Awaitable[JSONResponse]]:
    """The route function of one task; every task shares ``_RestDoor.analyze``."""

    async def endpoint(request: Request, query: Annotated[AnalysisParams, Query()]) -> JSONResponse:
        return await door.analyze(task, request, query)

    endpoint.__name__ = f"analyze_{task}"
    endpoint.__doc__ = (
        f"Detect the faces in an image or short video and judge each with the {task} model.\n\n"
        f"Upload the media as multipart/form-data in the field `{UPLOAD_FIELD}`; its type is sniffed "
        "from the bytes (JPEG, PNG, WebP; MP4 or WebM video). Parameters may be query parameters or "
        "form fields. Videos are sampled evenly (`max_frames`) or at `fps`."
    )
    return endpoint


def _api_key_guard(keys: list[str]) -> Callable[..., Awaitable[None]]:
    scheme = APIKeyHeader(name="x-api-key", auto_error=False, description="one of the server's configured API keys")
    accepted = [key.encode() for key in keys]

    async def require_api_key(key: str | None = Security(scheme)) -> None:  # scheme: a local, not annotatable
        if key is None:
            raise Unauthorized("missing_api_key", "send an API key in the x-api-key header")
        matched = False
        for candidate in accepted:  # every key compared, each in constant time
            matched |= hmac.compare_digest(key.encode(), candidate)
        if not matched:
            raise Unauthorized("invalid_api_key", "the x-api-key header does not hold an accepted key")

    return require_api_key


# ---- errors ----------------------------------------------------------------------------------


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = uuid.uuid4().hex
    body = {"error": {"reason": reason, "message": message}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "x-request-id": request_id})


async def _analysis_error(request: Request, exc: AnalysisError) -> JSONResponse:
    log.info("%s %s -> %d %s", request.method, request.url.path, exc.http_status, exc.reason)
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, Overloaded) else None
    return _error(exc.http_status, exc.reason, exc.message, headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_parameter", _validation_message(exc.errors()))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error(exc.status_code, reason, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "the server failed to answer the request")


# ---- the app ---------------------------------------------------------------------------------


def create_app(core: AnalysisCore, settings: Settings) -> FastAPI:
    """The REST app over ``core``; the caller starts and stops the core (``service.server``)."""
    app = FastAPI(
        title="fsfm",
        summary="Face security on the FSFM ViT: deepfake, liveness and diffusion-forgery detection.",
        version="1",
    )
    door = _RestDoor(core, settings)
    guarded = [Depends(_api_key_guard(settings.api_keys))] if settings.api_keys else []
    analysis_errors = _error_responses(400, 401, 404, 413, 415, 422, 429, 503, 504)
    for task in TASKS:
        app.add_api_route(
            f"/v1/{task}",
            _analysis_endpoint(door, task),
            methods=["POST"],
            response_model=AnalysisResponse,
            responses=analysis_errors,
            dependencies=guarded,
            openapi_extra=_upload_body_schema(),
            summary=f"Judge the faces of an image or video ({task})",
            tags=["analysis"],
        )

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=guarded, tags=["models"],
             responses=_error_responses(401))
    async def list_models() -> ModelsResponse:
        """Every loaded model package with its manifest."""
        return door.models()

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up (liveness probe)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             responses={503: {"model": Readiness, "description": "loading, draining, or a backend is down"}})
    async def readyz() -> JSONResponse:
        """Models loaded and warmed up, queue reachable, not draining (readiness probe)."""
        return door.readiness()

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    async def metrics() -> Response:
        """Prometheus metrics (names in docs/api.md)."""
        return Response(core.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_exception_handler(AnalysisError, _analysis_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["x-api-key", "content-type"], expose_headers=["x-request-id", "retry-after"],
        )
    return app
