"""``/livez`` and ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics`` (Prometheus): the
probes of the API and of ``fsfm worker`` alike, over whatever ``app.state.probes`` is (the core, or a
worker).

Readiness has one shape (``service/readiness.py``): ``{"ready": bool, "reason": ..., **details}``,
200 when ready, else 503 with the reason (e.g. ``no_models`` for an empty model repository).
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.rest.deps import ProbesDep
from service.rest.schemas import Readiness

router = APIRouter(tags=["operations"])


@router.get("/livez")
@router.get("/healthz")  # the name earlier releases documented
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers (liveness probe)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "loading, draining, no model served, or a backend is down"}},
)
async def readyz(probes: ProbesDep) -> JSONResponse:
    """Models loaded and warmed up, queue reachable, not draining (readiness probe)."""
    ready, details = probes.readiness()
    status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
    return JSONResponse({"ready": ready, **details}, status_code=status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(probes: ProbesDep) -> Response:
    """Prometheus metrics (names in docs/api.md)."""
    return Response(probes.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
