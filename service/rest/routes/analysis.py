"""``POST /v1/{task}`` for every task (deepfake, liveness, diffusion), all through one handler: the
upload and parameters become an ``AnalysisRequest``, the core's ``Report`` becomes JSON.

A task without a loaded model answers 404 ``task_not_served`` before the upload is read; a refusal
that admission would give now (503 not ready or draining, 429 overloaded) never reaches this route:
the admission gate in front of the app answers it (``service/rest/gate.py``). Failures
before the core (upload, parameters) are counted by ``core.refused``, like the core's own. A client
that disconnects while the core works on its request cancels the core call (its work stops at the
next stage); the answer nobody reads is ``CLIENT_CLOSED_REQUEST``, for the access log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from fsfm.package.manifest import TASKS
from service.core import AnalysisOptions, AnalysisRequest, Report, RequestContext
from service.errors import AnalysisError, DeadlineExceeded, InvalidRequest
from service.rest.deps import CoreDep, SettingsDep
from service.rest.errors import error_responses, validation_message
from service.rest.gate import RESERVATION
from service.rest.multipart import UPLOAD_FIELD, read_upload
from service.rest.schemas import AnalysisParams, AnalysisResponse, report_json

TRANSPORT = "rest"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away before its answer

router = APIRouter(tags=["analysis"])
Params = TypeVar("Params", bound=AnalysisParams)


async def analyze(
    task: str, request: Request, query: AnalysisParams, core: CoreDep, settings: SettingsDep
) -> JSONResponse:
    context = RequestContext(TRANSPORT, deadline=time.monotonic() + settings.request_timeout_s)
    options = AnalysisOptions(task=task, model=query.model)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            core.check_task(task)
            upload = await read_upload(request, settings.max_upload_bytes)
            options = AnalysisOptions(task=task, **merge_params(query, upload.fields).model_dump())
    except TimeoutError:
        raise await core.refused(options, context, DeadlineExceeded()) from None
    except AnalysisError as exc:
        raise await core.refused(options, context, exc) from None
    reservation = getattr(request.state, RESERVATION, None)  # held by the admission gate
    analysis = asyncio.ensure_future(
        core.analyze(AnalysisRequest(options, context, media=upload.data, reservation=reservation))
    )
    if (report := await _unless_disconnected(request, analysis)) is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return JSONResponse(report_json(report), headers={"x-request-id": report.request_id})


async def _unless_disconnected(request: Request, analysis: asyncio.Future[Report]) -> Report | None:
    """The core's report, or None once the client has disconnected: then the core call is cancelled."""
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((analysis, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not analysis.done():  # the client has gone, or this handler is being cancelled
            analysis.cancel()
            await asyncio.gather(analysis, return_exceptions=True)
    return None if analysis.cancelled() else analysis.result()


async def _disconnect(request: Request) -> None:
    """Until the client disconnects (the body has been read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def merge_params(query: Params, form: dict[str, str]) -> Params:
    """Query parameters and form fields, validated alike (by ``query``'s class: ``AnalysisParams`` or
    an extension of it); one parameter given both ways is refused."""
    params = type(query)
    try:
        from_form = params.model_validate(form)
    except ValidationError as exc:
        raise InvalidRequest("invalid_parameter", validation_message(exc.errors())) from None
    in_query = query.model_dump(exclude_none=True)
    in_form = from_form.model_dump(exclude_none=True)
    if twice := sorted(in_query.keys() & in_form.keys()):
        raise InvalidRequest("invalid_parameter", f"given both as query parameter and form field: {twice}")
    return params(**in_query, **in_form)


def upload_body_schema(params: type[AnalysisParams] = AnalysisParams) -> dict[str, object]:
    """The multipart body, for OpenAPI: the route parses it itself (as a bounded stream), so FastAPI
    cannot derive it from the signature. ``params``: the form fields besides the upload."""
    properties: dict[str, object] = {
        UPLOAD_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "JPEG, PNG or WebP image, or MP4/WebM video; the type is sniffed from the bytes",
        },
    }
    properties.update(params.model_json_schema()["properties"])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": [UPLOAD_FIELD], "properties": properties}
                }
            },
        }
    }


def _endpoint(task: str) -> Callable[..., Awaitable[JSONResponse]]:
    """The route function of one task; every task shares ``analyze``."""

    async def endpoint(
        request: Request, query: Annotated[AnalysisParams, Query()], core: CoreDep, settings: SettingsDep
    ) -> JSONResponse:
        return await analyze(task, request, query, core, settings)

    endpoint.__name__ = f"analyze_{task}"
    endpoint.__doc__ = (
        f"Detect the faces in an image or short video and judge each with the {task} model.\n\n"
        f"Upload the media as multipart/form-data in the field `{UPLOAD_FIELD}`; its type is sniffed "
        "from the bytes (JPEG, PNG, WebP; MP4 or WebM video). Parameters may be query parameters or "
        "form fields. Videos are sampled evenly (`max_frames`) or at `fps`."
    )
    return endpoint


for _task in TASKS:
    router.add_api_route(
        f"/v1/{_task}",
        _endpoint(_task),
        methods=["POST"],
        response_model=AnalysisResponse,
        responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503, 504),
        openapi_extra=upload_body_schema(),
        summary=f"Judge the faces of an image or video ({_task})",
    )
