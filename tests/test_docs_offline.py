"""``/docs`` and ``/redoc`` render in a real browser with the network closed: their scripts and styles
come from the server itself (``service/rest/docs.py``), never a CDN."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import rendered_dom
from tests.packages import make_tiny_package
from tests.servers import RunningServer, running_server

EXTERNAL_URL = re.compile(r"""(?:src|href)=["'](?:https?:)?//(?!127\.0\.0\.1)""")


@pytest.fixture(scope="module")
def server(tmp_path_factory, mtcnn_dir) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models")
    make_tiny_package(models, name="tiny-deepfake", task="deepfake")
    with running_server(models, grpc=False) as running:
        yield running


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_pages_load_nothing_from_other_hosts(server, page) -> None:
    html = httpx.get(server.rest_url + page).text
    assert not EXTERNAL_URL.search(html), html
    for asset in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html):
        assert httpx.get(server.rest_url + asset).status_code == 200, asset


def test_swagger_ui_renders_the_operations_offline(server) -> None:
    dom = rendered_dom(server.rest_url + "/docs")
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert {"/v1/deepfake", "/v1/liveness", "/v1/models", "/readyz"} <= paths, dom[:2000]


def test_redoc_renders_the_operations_offline(server) -> None:
    dom = rendered_dom(server.rest_url + "/redoc")
    assert "Judge the faces of an image or video (deepfake)" in dom, dom[:2000]
    assert "/v1/models" in dom
