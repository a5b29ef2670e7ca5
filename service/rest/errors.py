"""One JSON error shape for every failure of the REST API, and its OpenAPI documentation.

``{"error": {"reason": ..., "message": ...}, "request_id": ...}`` with the status of the error
(``service/errors.py``: each ``AnalysisError`` carries its reason and HTTP status), the same
``x-request-id`` header as successful answers, and ``Retry-After`` on 429. FastAPI's own failures
(validation, unknown path, wrong method) and unexpected exceptions get the same shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import AnalysisError, Overloaded
from service.rest.schemas import ErrorResponse

log = logging.getLogger("fsfm.service.rest")

_ERROR_EXAMPLES: dict[int, tuple[str, str]] = {
    400: ("corrupt", "cannot decode JPEG: image file is truncated"),
    401: ("invalid_api_key", "the x-api-key header does not hold an accepted key"),
    404: ("model_not_found", "no model named 'fsfm-dfx'; models: ['fsfm-dfd', 'fsfm-fas']"),
    413: ("body_too_large", "the request body exceeds 26214400 bytes"),
    409: ("job_finished", "the job has succeeded; only a queued or running job can be cancelled"),
    415: ("unsupported_type", "not a JPEG, PNG or WebP image, nor an MP4 or WebM video"),
    422: ("missing_file", "upload the image or video in the multipart field 'file'; got fields: ['image']"),
    429: ("overloaded", "model fsfm-dfd:1: 256 faces queued, limit 256"),
    503: ("draining", "the service is shutting down"),
    504: ("deadline_exceeded", "the request's deadline passed before it was answered"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses: the error shape with an example each."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        reason, message = _ERROR_EXAMPLES[status]
        responses[status] = {
            "model": ErrorResponse,
            "description": HTTPStatus(status).phrase,
            "content": {
                "application/json": {
                    "example": {
                        "error": {"reason": reason, "message": message},
                        "request_id": "9b2e4c6d8f0a1b3c5d7e9f1a2b4c6d8e",
                    }
                }
            },
        }
    if 429 in responses:
        responses[429]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return responses


def validation_message(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line: ``threshold: Input should be less than or equal to 1; ...``."""

    def where(error: dict) -> str:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        return ".".join(location) or "request"

    return "; ".join(f"{where(e)}: {e.get('msg', 'invalid')}" for e in errors)


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = uuid.uuid4().hex
    body = {"error": {"reason": reason, "message": message}, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "x-request-id": request_id})


def analysis_error_response(exc: AnalysisError, method: str, path: str) -> JSONResponse:
    """The answer to a failed request (logged), for the exception handler and the admission gate."""
    log.info("%s %s -> %d %s", method, path, exc.http_status, exc.reason)
    headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))} if isinstance(exc, Overloaded) else None
    return _error(exc.http_status, exc.reason, exc.message, headers)


async def _analysis_error(request: Request, exc: AnalysisError) -> JSONResponse:
    return analysis_error_response(exc, request.method, request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_parameter", validation_message(exc.errors()))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return _error(exc.status_code, reason, str(exc.detail), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "the server failed to answer the request")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AnalysisError, _analysis_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
