"""Errors of the analysis core, each with the HTTP status and gRPC code that both doors use.

Messages go to clients as they are (REST JSON, gRPC details), so every message passes
``public_message``: library exception texts woven into them (Pillow, PyAV, ONNX Runtime, Redis) lose
object reprs, memory addresses, tracebacks and the directories of file paths.
"""

from __future__ import annotations

import re
from http import HTTPStatus

_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f3c...>
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")  # a bare heap address
_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.+-]+)+/([\w.+-]+)")  # /any/dirs/name -> name
_TRACEBACK = "Traceback (most recent call last)"


def public_message(text: str) -> str:
    """``text`` without what a client must not see: the server's object reprs and addresses, the
    directories of absolute paths (the file name stays), and any traceback (cut off)."""
    text = text.split(_TRACEBACK, 1)[0]
    text = _REPR.sub("", text)
    text = _ADDRESS.sub("(address)", text)
    text = _PATH.sub(r"\1", text)
    return " ".join(text.split()).rstrip(" :;,")


class AnalysisError(Exception):
    """A request that cannot be answered. ``reason`` is a stable, machine-readable code (also the
    ``reason`` label of the failure metric); ``grpc_code`` is a ``grpc.StatusCode`` name."""

    http_status: int = HTTPStatus.BAD_REQUEST
    grpc_code: str = "INVALID_ARGUMENT"

    def __init__(self, reason: str, message: str) -> None:
        message = public_message(message)
        super().__init__(message)
        self.reason = reason
        self.message = message


class BadInput(AnalysisError):
    """The request's content is unusable (not an image, corrupt, bad parameter)."""


class UnsupportedMedia(AnalysisError):
    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class TooLarge(AnalysisError):
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ModelNotFound(AnalysisError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class NotFound(AnalysisError):
    """A resource the request names does not exist (or has expired), e.g. a job."""

    http_status = HTTPStatus.NOT_FOUND
    grpc_code = "NOT_FOUND"


class Conflict(AnalysisError):
    """The resource's state forbids the request, e.g. cancelling a job that has finished."""

    http_status = HTTPStatus.CONFLICT
    grpc_code = "FAILED_PRECONDITION"


class Overloaded(AnalysisError):
    """A bounded queue is full: retry later. ``reason`` is ``overloaded`` (the analysis) unless a
    more specific limit says otherwise (``too_many_jobs``)."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "overloaded") -> None:
        super().__init__(reason, message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(AnalysisError):
    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = "DEADLINE_EXCEEDED"

    def __init__(self, message: str = "the request's deadline passed before it was answered") -> None:
        super().__init__("deadline_exceeded", message)


class Unavailable(AnalysisError):
    """Not ready, draining, or a backend (queue, engine) is down."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = "UNAVAILABLE"


class InferenceFailed(AnalysisError):
    http_status = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code = "INTERNAL"


class InvalidRequest(AnalysisError):
    """The request's form does not match the API (missing upload field, malformed parameter)."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY


class Unauthorized(AnalysisError):
    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code = "UNAUTHENTICATED"
