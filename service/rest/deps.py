"""Shared dependencies of the REST routes, as ``Annotated`` aliases: the core and settings the app
was made with (``create_app`` puts them on ``app.state``), the probes' source, and the API-key
check (``service/auth.py``), which ``create_app`` makes a dependency of the ``/v1`` routers when
keys are configured."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.auth import API_KEY_HEADER, ApiKeys
from service.core import AnalysisCore
from service.metrics import Metrics
from service.settings import Settings


class Probes(Protocol):
    """What the operations routes read: the API's core, or a worker."""

    metrics: Metrics

    def readiness(self) -> tuple[bool, dict[str, object]]: ...


def _core(request: Request) -> AnalysisCore:
    return request.app.state.core


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _probes(request: Request) -> Probes:
    return request.app.state.probes


_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="one of the server's configured API keys"
)


ApiKeyHeader = Annotated[str | None, Security(_api_key_scheme)]
CoreDep = Annotated[AnalysisCore, Depends(_core)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ProbesDep = Annotated[Probes, Depends(_probes)]


async def require_api_key(request: Request, key: ApiKeyHeader) -> None:
    keys: ApiKeys = request.app.state.api_keys
    keys.check(key, "header")


ApiKeyDep = Depends(require_api_key)  # a router dependency: include_router(..., dependencies=[ApiKeyDep])
