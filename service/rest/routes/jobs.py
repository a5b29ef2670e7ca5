"""``/v1/jobs``: asynchronous analysis (docs/api.md, "Jobs").

``POST /v1/jobs`` takes the analysis endpoints' upload and parameters plus ``task`` and an optional
``callback_url`` and answers 202 with the Job document (``Location: /v1/jobs/{id}``) once the job is
stored; the work runs on this node (``service/jobs/runner.py``). A place among the node's pending
jobs is taken before the body is read (429 ``too_many_jobs``, on the declared ``Content-Length``
too); the cheap checks of the analysis (task, model, threshold, sampling, the media's type, the
callback URL) answer at once, so a job that is accepted fails later only on what needs the work
(a corrupt video, say). ``Idempotency-Key`` (scoped per API key): a retried submission gets the same
job (202 again, with ``Idempotent-Replayed: true``); the key on another request is 422
``idempotency_key_reused``. ``GET /v1/jobs/{id}`` answers the document (any node, with a Redis
queue); ``DELETE`` cancels (409 ``job_finished`` once it has succeeded or failed).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from fsfm.package.manifest import TASKS
from service.auth import API_KEY_HEADER
from service.core import AnalysisOptions
from service.errors import DeadlineExceeded, InvalidRequest, NotFound
from service.jobs.runner import JobRunner, Submission
from service.jobs.store import Job, idempotency_key
from service.jobs.webhooks import MAX_CALLBACK_URL_CHARS, check_callback
from service.media import media_kind
from service.rest.deps import CoreDep, SettingsDep
from service.rest.errors import error_responses
from service.rest.multipart import read_upload
from service.rest.routes.analysis import merge_params, upload_body_schema
from service.rest.schemas import AnalysisParams, AnalysisResponse

MAX_IDEMPOTENCY_KEY_CHARS = 255  # Stripe's limit; a UUID is 36
_JOB_ID = re.compile(r"[0-9a-f]{32}")

router = APIRouter(tags=["jobs"])


class JobParams(AnalysisParams):
    """A job's parameters: the analysis endpoints' ones, the task, and where its webhook goes."""

    task: str | None = Field(default=None, description=f"the analysis: {' | '.join(TASKS)} (required)")
    callback_url: str | None = Field(
        default=None,
        max_length=MAX_CALLBACK_URL_CHARS,
        description="http(s) URL that receives the finished job, signed (needs the server's webhook secret)",
        examples=["https://hooks.example.com/fsfm"],
    )


_RESULT_EXAMPLE = AnalysisResponse.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
_STARTED = "2026-12-03T15:04:05.120+00:00"
_JOB_EXAMPLE: dict[str, Any] = {
    "job_id": "7d2f8a4be1c94f0f9b3a5c6d7e8f9a0b",
    "status": "running",
    "task": "deepfake",
    "created_at": _STARTED,
    "updated_at": "2026-12-03T15:04:07.420+00:00",
    "expires_at": None,
    "progress": {"frames_done": 12, "frames_total": 64},
    "result": None,
    "error": None,
    "webhook": {"url": "https://hooks.example.com/fsfm", "deliveries": []},
}
_DONE_EXAMPLE: dict[str, Any] = {
    **_JOB_EXAMPLE,
    "status": "succeeded",
    "updated_at": "2026-12-03T15:04:09.870+00:00",
    "expires_at": "2026-12-03T16:04:09.870+00:00",
    "progress": {"frames_done": 1, "frames_total": 1},
    "result": {**_RESULT_EXAMPLE, "request_id": "7d2f8a4be1c94f0f9b3a5c6d7e8f9a0b"},
    "webhook": {
        "url": "https://hooks.example.com/fsfm",
        "deliveries": [{"attempt": 1, "at": "2026-12-03T15:04:09.910+00:00", "status_code": 200, "error": None}],
    },
}


class JobResponse(Job):
    """The Job document (``result`` as the synchronous endpoint answers it)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE, _DONE_EXAMPLE]})

    result: AnalysisResponse | None = Field(  # type: ignore[assignment]  (the same JSON, described)
        default=None,
        description="once succeeded: the analysis response, exactly as the synchronous endpoint answers it",
    )


def _runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def _job_body_schema() -> dict[str, object]:
    schema = upload_body_schema(JobParams)
    body = schema["requestBody"]["content"]["multipart/form-data"]["schema"]  # type: ignore[index]
    body["required"] = [*body["required"], "task"]
    return schema


def _document(job: Job, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(job.model_dump(mode="json"), status_code=status_code, headers=headers)


def _caller_scope(request: Request) -> str:
    """Whose idempotency keys these are: a digest of the caller's API key (all callers alike without keys)."""
    key = request.headers.get(API_KEY_HEADER)
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anyone"


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobResponse,
    responses={
        202: {
            "description": "Accepted: the job, stored; its work runs in the background",
            "headers": {
                "Location": {"description": "the job's URL, `/v1/jobs/{job_id}`", "schema": {"type": "string"}},
                "Idempotent-Replayed": {
                    "description": "`true` when an earlier submission's Idempotency-Key gave this job",
                    "schema": {"type": "string"},
                },
            },
        },
        **error_responses(400, 401, 404, 413, 415, 422, 429, 503),
    },
    openapi_extra=_job_body_schema(),
    summary="Submit an image or video for analysis in the background",
)
async def submit_job(
    request: Request,
    query: Annotated[JobParams, Query()],
    core: CoreDep,
    settings: SettingsDep,
    idempotency: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=MAX_IDEMPOTENCY_KEY_CHARS,
            description="a retried submission with the same key gets the same job",
        ),
    ] = None,
) -> JSONResponse:
    """Upload the media as multipart/form-data in the field `file`, with `task` and the analysis
    endpoints' parameters (query parameters or form fields), and optionally `callback_url`. Answers
    202 with the job; poll `GET /v1/jobs/{job_id}` or wait for the webhook. Videos may be longer than
    the synchronous endpoints take (the server's `job_max_video_seconds`, `job_max_video_frames`)."""
    runner = _runner(request)
    declared = request.headers.get("content-length", "")
    slot = runner.reserve(int(declared) if declared.isdigit() else None)
    try:
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                upload = await read_upload(request, settings.job_max_upload_bytes)
        except TimeoutError:
            raise DeadlineExceeded("the upload was not received within the request timeout") from None
        params = merge_params(query, upload.fields)
        if params.task not in TASKS:
            raise InvalidRequest("invalid_parameter", f"task: one of {list(TASKS)} is required; got {params.task!r}")
        core.check_task(params.task)
        options = AnalysisOptions(**params.model_dump(exclude={"callback_url"}))
        core.check(options, settings.job_video_limits())
        media_kind(upload.data)  # 415 unsupported_type now, not when the job runs
        if params.callback_url is not None:
            check_callback(params.callback_url, settings)
        slot.hold(len(upload.data))
    except BaseException:
        slot.release()
        raise
    submission = Submission(options, upload.data, params.callback_url)
    del upload  # the submission holds the media now
    key = idempotency_key(_caller_scope(request), idempotency) if idempotency else None
    job, replayed = await runner.submit(slot, submission, key)
    headers = {"Location": f"/v1/jobs/{job.job_id}", **({"Idempotent-Replayed": "true"} if replayed else {})}
    return _document(job, 202, headers)


@router.get("/v1/jobs/{job_id}", response_model=JobResponse, responses=error_responses(401, 404, 503))
async def get_job(request: Request, job_id: str) -> JSONResponse:
    """The job: its status and progress, and its result once it has succeeded."""
    return _document(await _runner(request).get(_checked(job_id)))


@router.delete("/v1/jobs/{job_id}", response_model=JobResponse, responses=error_responses(401, 404, 409, 503))
async def cancel_job(request: Request, job_id: str) -> JSONResponse:
    """Cancel a queued or running job: its analysis stops; answers the cancelled job."""
    return _document(await _runner(request).cancel(_checked(job_id)))


def _checked(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound("job_not_found", f"no job {job_id[:64]!r}: job ids are 32 hex digits")
    return job_id
