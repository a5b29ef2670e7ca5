"""Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) with the network closed: every
host name but the loopback address fails to resolve, so a page that needs a CDN renders nothing."""

from __future__ import annotations

import shutil
import subprocess

CLOSED_NETWORK = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
RENDER_BUDGET_MS = 8000  # virtual time the page's scripts get before the DOM is read


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (.ci/run installs Debian's chromium)"
    return binary


def rendered_dom(url: str, timeout_s: float = 90.0) -> str:
    """The DOM of ``url`` after its scripts ran, loaded with the network closed."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--host-resolver-rules={CLOSED_NETWORK}",
            f"--virtual-time-budget={RENDER_BUDGET_MS}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
