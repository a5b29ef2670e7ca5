"""The admission gate in front of the REST app: a plain ASGI layer that, for ``POST /v1/{task}``,
holds the request's place in admission's line before FastAPI routes, validates or reads anything
(``AnalysisCore.reserve``), or answers the refusal admission gives now (429 overloaded, 503 not
ready or draining). The route passes the place on to the core (``reservation``); the gate gives it
back when the request ends, if the core never took it.

Why a layer of its own that holds a place: refusals come in bursts. Merely asking admission at the
route let all of a burst of 75 simultaneous requests through (none had been admitted yet: each was
still reading its body), so every one read its upload and parsed its form before the core refused
it, ~3 ms of the event loop each; the 75th waited ~200 ms. A place held at the door refuses the rest
of the burst at once, for a fraction of that.

Requests it leaves to the app: other paths and methods, a task no loaded model serves (404 from the
route), and, where API keys are configured, a request without an accepted key (401 from the route:
an unauthenticated client learns nothing of the load).
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from fsfm.package.manifest import TASKS
from service.auth import API_KEY_HEADER, ApiKeys
from service.core import AnalysisCore, AnalysisOptions, RequestContext
from service.errors import AnalysisError, Unauthorized
from service.rest.errors import analysis_error_response

TRANSPORT = "rest"
RESERVATION = "fsfm_reservation"  # the key of the request's place in ``scope["state"]`` (``request.state``)
_TASK_PATHS = {f"/v1/{task}": task for task in TASKS}
_KEY_HEADER = API_KEY_HEADER.encode()


class AdmissionGate:
    def __init__(self, app: ASGIApp, core: AnalysisCore, api_keys: ApiKeys) -> None:
        self.app, self.core, self.api_keys = app, core, api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = _TASK_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if task is not None and scope["method"] == "POST" and self._authorised(scope):
            if not self.core.ready or task in self.core.tasks():
                try:
                    reservation = self.core.reserve()
                except AnalysisError as exc:
                    model = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("model", [None])[0]
                    context = RequestContext(TRANSPORT, deadline=time.monotonic())
                    await self.core.refused(AnalysisOptions(task=task, model=model), context, exc)
                    await analysis_error_response(exc, scope["method"], scope["path"])(scope, receive, send)
                    return
                scope.setdefault("state", {})[RESERVATION] = reservation
                try:
                    await self.app(scope, receive, send)
                finally:
                    reservation.release()  # unused (the request failed before the core): its place is free
                return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        if not self.api_keys:
            return True
        key = next((value for name, value in scope["headers"] if name == _KEY_HEADER), None)
        try:
            self.api_keys.check(key.decode("latin-1") if key is not None else None, "header")
        except Unauthorized:
            return False
        return True
