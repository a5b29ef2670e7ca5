"""Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) with the network closed: every
host name but the loopback address fails to resolve, so a page that needs a CDN renders nothing.

``rendered_dom`` loads a page and dumps its DOM; ``Browser`` drives Chromium over the DevTools
protocol on a pipe, for tests that use a page (choose files, read what it drew, its network log).
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

CLOSED_NETWORK = "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
RENDER_BUDGET_MS = 8000  # virtual time the page's scripts get before the DOM is read
COMMAND_TIMEOUT_S = 30.0  # a DevTools command the browser does not answer in this long is a failure
WAIT_TIMEOUT_S = 30.0  # a page condition not true in this long is a failure (analyses on 2 shared cores)
POLL_INTERVAL_S = 0.05  # between checks of a page condition


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


def _above_four(fd: int) -> int:
    """``fd`` moved to a number above 4 (the original is closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


class CdpError(RuntimeError):
    """A DevTools protocol command failed, or an awaited condition did not come true in time."""


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
    the browser reads commands from its fd 3 and writes answers and events to its fd 4, each message
    JSON ending in a NUL byte), so no websocket client and no driver download are needed. ``flags``
    are added to the command line (e.g. a fake camera); the network is closed as in ``rendered_dom``."""

    def __init__(self, profile: Path, flags: Sequence[str] = ()) -> None:
        self.log_path = profile.with_name(f"{profile.name}.log")  # the browser's stderr
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # Above 4, so that making them fds 3 and 4 in the browser cannot overwrite one with the other.
        commands_read, answers_write = (_above_four(fd) for fd in (commands_read, answers_write))
        launch = f'exec "$0" "$@" 3<&{commands_read} 4>&{answers_write}'  # the pipes as fds 3 and 4
        self.process = subprocess.Popen(
            [
                "bash",  # dash's redirections take one-digit fds only
                "-c",
                launch,
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                f"--host-resolver-rules={CLOSED_NETWORK}",
                *flags,
                "about:blank",
            ],
            pass_fds=(commands_read, answers_write),
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
        )
        os.close(commands_read)
        os.close(answers_write)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._results: dict[int, dict] = {}
        self.events: list[dict] = []  # every event so far: {"method", "params", "sessionId"}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._answers, "rb", buffering=0) as answers:
            while chunk := answers.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                with self._lock:
                    for raw in messages:
                        message = json.loads(raw)
                        if "id" in message:
                            self._results[message["id"]] = message
                        else:
                            self.events.append(message)
                    self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command's result; CdpError when it fails or gets no answer within COMMAND_TIMEOUT_S."""
        message_id = next(self._ids)
        message: dict = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise CdpError(f"the browser has gone: {self.log_path.read_text(errors='replace')[-3000:]}") from None
        with self._lock:
            if not self._lock.wait_for(lambda: message_id in self._results, COMMAND_TIMEOUT_S):
                raise CdpError(f"no answer to {method} within {COMMAND_TIMEOUT_S} s")
            answer = self._results.pop(message_id)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def new_tab(self, width_px: int = 1200, height_px: int = 900) -> Tab:
        """A new tab (its own browser context: no storage shared with other tabs) of that viewport size."""
        context = self.send("Target.createBrowserContext")["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, session)
        for domain in ("Page", "Runtime", "Network"):
            tab.send(f"{domain}.enable")
        tab.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width_px, "height": height_px, "deviceScaleFactor": 1, "mobile": width_px < 600},
        )
        return tab

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=10)
        except (CdpError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._commands)


class Tab:
    """One page of a ``Browser``: navigate, evaluate JavaScript, wait for a condition, choose files,
    read its network log, take a screenshot."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def evaluate(self, expression: str) -> object:
        """The value of a JavaScript expression (promises awaited), as JSON."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise CdpError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = WAIT_TIMEOUT_S) -> object:
        """The first truthy value of ``expression``, polled; CdpError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(POLL_INTERVAL_S)
        raise CdpError(f"not true within {timeout_s} s: {expression}\n{self.evaluate('document.body.innerText')}")

    def choose_files(self, selector: str, *paths: Path) -> None:
        """Set a file input's files, as a person choosing them does (its ``change`` event fires)."""
        document = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": document, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(path) for path in paths]})

    def drop_files(self, selector: str, *paths: Path) -> None:
        """Drag files from outside the page and drop them on the middle of the element ``selector``."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        assert isinstance(box, list), selector
        data = {"items": [], "files": [str(path) for path in paths], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver", "drop"):
            self.send("Input.dispatchDragEvent", {"type": kind, "x": box[0], "y": box[1], "data": data})

    def type_text(self, text: str) -> None:
        """Type into the focused element."""
        self.send("Input.insertText", {"text": text})

    def press(self, key: str) -> None:
        """Press and release a named key (e.g. "ArrowRight") on the focused element."""
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key})

    def requests(self) -> list[tuple[str, str]]:
        """(method, URL) of every request this tab has made so far (the network log)."""
        return [
            (event["params"]["request"]["method"], event["params"]["request"]["url"])
            for event in list(self.browser.events)
            if event.get("sessionId") == self.session and event["method"] == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport)."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
