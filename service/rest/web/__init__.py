"""The web page for people (docs/api.md, "Web page"): plain HTML, CSS and JavaScript modules in
``static/``, served by the service itself at ``/`` and ``/ui`` with their assets under ``ASSETS``.
Nothing is fetched from another host and nothing is built at run time, so the page works on a closed
network. The page uses only the public API (``/v1/...`` and ``/openapi.json``) from the same origin.

Every response of the page (the HTML and its assets, not the API's) carries ``PAGE_HEADERS``: a strict
Content-Security-Policy that lets scripts, styles and connections reach this origin only, images come
from here, ``blob:`` (the uploaded image) or ``data:`` (heatmap PNGs in the answers), and media from
``blob:`` (the uploaded video) or ``mediastream:`` (the webcam).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_PATHS = ("/", "/ui")
ASSETS = "/ui/static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new service version serves its own page at once
}


class _PageAssets(StaticFiles):
    """The page's assets, each answered with ``PAGE_HEADERS``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def add_web_page(app: FastAPI) -> None:
    """Serve the page at ``PAGE_PATHS`` and its assets at ``ASSETS``; none of them asks for an API
    key (the page asks the person for one when the API answers 401)."""
    app.mount(ASSETS, _PageAssets(directory=STATIC_DIR), name="web-assets")
    index = STATIC_DIR / "index.html"

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    for path in PAGE_PATHS:
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False, name=f"web-page{path}")
