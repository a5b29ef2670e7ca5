"""The REST apps, each assembled in one factory: routers, exception handlers, middleware.

``create_app(core, settings)``: the API (docs/api.md). API keys, when configured, guard the ``/v1``
routers (analysis, models, jobs); the probes, the OpenAPI document and its pages (``/docs``,
``/redoc``, served from packaged assets: ``service/rest/docs.py``) and the web page (``/``, ``/ui``:
``service/rest/web/``, which asks for a key when the API answers 401) stay open for probes, scrapers
and people. ``create_probe_app``: the operations routes alone, over any ``Probes`` (``fsfm worker``
serves it on its metrics port). The caller starts and stops the core, and stops the job runner
(``app.state.jobs``): ``service/server.py``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.auth import ApiKeys
from service.core import AnalysisCore
from service.jobs.runner import create_runner
from service.rest.deps import ApiKeyDep, Probes
from service.rest.docs import add_offline_docs
from service.rest.errors import add_error_handlers
from service.rest.gate import AdmissionGate
from service.rest.routes import analysis, jobs, models, operations
from service.rest.web import add_web_page
from service.settings import Settings

TITLE = "fsfm"
SUMMARY = "Face security on the FSFM ViT: deepfake, liveness and diffusion-forgery detection."


def create_app(core: AnalysisCore, settings: Settings) -> FastAPI:
    """The REST API over ``core``."""
    app = FastAPI(title=TITLE, summary=SUMMARY, version="1", docs_url=None, redoc_url=None)
    add_offline_docs(app)
    app.state.core, app.state.settings, app.state.probes = core, settings, core
    app.state.api_keys = ApiKeys(settings.api_keys)
    app.state.jobs = create_runner(core, settings)  # the caller stops it too (``JobRunner.stop``)
    guarded = [ApiKeyDep] if app.state.api_keys else []
    app.include_router(analysis.router, dependencies=guarded)
    app.include_router(models.router, dependencies=guarded)
    app.include_router(jobs.router, dependencies=guarded)
    app.include_router(operations.router)
    add_web_page(app)
    add_error_handlers(app)
    app.add_middleware(AdmissionGate, core=core, api_keys=app.state.api_keys)  # refusals before any routing
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["x-api-key", "content-type", "idempotency-key"],
            expose_headers=["x-request-id", "retry-after", "location", "idempotent-replayed"],
        )
    return app


def create_probe_app(probes: Probes) -> FastAPI:
    """``/healthz``, ``/readyz`` and ``/metrics`` over ``probes``."""
    app = FastAPI(title=f"{TITLE} probes", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.probes = probes
    app.include_router(operations.router)
    add_error_handlers(app)
    return app
