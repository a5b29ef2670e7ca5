"""``fsfm serve`` as a child process on loopback, and reading its ``/metrics``.

Used by ``fsfm bench serve`` to start the service itself for a one-command run, and by the tests.
``running_server`` starts it on free ports (port 0: the server logs the ports it bound), waits for
``/readyz``, yields the REST base URL and the gRPC target, and on exit sends SIGTERM and checks the
process exits cleanly within its bound. Settings go in as ``FSFM_*`` environment variables, exactly
as an operator would give them. The detector's weights must be in the cache first (``fsfm setup``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

SERVING_LINE = re.compile(r"fsfm serving rest=(?P<rest>\S+) grpc=(?P<grpc>\S+)")
STOP_MARGIN_S = 8.0  # beyond the drain grace: servers closing (service.server.STOP_BOUND_S) + interpreter exit


class ServerProcessError(RuntimeError):
    """The child service did not start, or did not stop cleanly; the message carries its log."""


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    rest_url: str
    grpc_target: str | None  # "127.0.0.1:PORT", None when started without gRPC
    stop_bound_s: float  # how long SIGTERM -> exit may take
    output: list[str] = field(default_factory=list)  # the server's log lines so far

    def log(self) -> str:
        return "".join(self.output)

    def terminate(self) -> float:
        """SIGTERM, then wait; returns the seconds the process took to exit. Raises
        ServerProcessError when it overruns its bound or exits with a non-zero code."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=self.stop_bound_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ServerProcessError(
                f"the server did not exit within {self.stop_bound_s} s of SIGTERM:\n{self.log()}"
            ) from None
        if code != 0:
            raise ServerProcessError(f"the server exited with {code}:\n{self.log()}")
        return time.monotonic() - started


def settings_env(settings: Mapping[str, object]) -> dict[str, str]:
    """``{"max_queue_size": 4, "api_keys": ["a", "b"]}`` -> ``FSFM_*`` variables."""

    def text(value: object) -> str:
        return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return {f"FSFM_{name.upper()}": text(value) for name, value in settings.items()}


@contextmanager
def running_server(
    models: Path,
    settings: Mapping[str, object] | None = None,
    grpc: bool = True,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 60.0,
    wait_ready: bool = True,
    wrapper: Sequence[str] = (),
    cwd: Path | None = None,
) -> Iterator[RunningServer]:
    """Serve ``models``; ``settings`` are Settings fields (host, ports and a short drain grace are
    preset), ``env`` the whole environment of the process (default: this one's), ``wrapper`` a
    command that runs the server (e.g. ``strace -f -o FILE``; it is what the yielded process is),
    ``cwd`` its working directory (default: this one's).
    Yields once ``/readyz`` answers 200, or with ``wait_ready=False`` once the process is live
    (``/livez``)."""
    chosen = {"host": "127.0.0.1", "port": 0, "grpc_port": 0, "shutdown_grace_s": 5, **(settings or {})}
    process_env = {**(env if env is not None else os.environ), **settings_env(chosen), "PYTHONUNBUFFERED": "1"}
    command = [
        *wrapper,
        sys.executable,
        "-m",
        "fsfm_cli",
        "serve",
        "--models",
        str(models),
        *([] if grpc else ["--no-grpc"]),
    ]
    process = subprocess.Popen(
        command, env=process_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = RunningServer(process, "", None, float(chosen["shutdown_grace_s"]) + STOP_MARGIN_S)
    serving = _follow(server)
    try:
        _wait_until_ready(server, serving, startup_timeout_s, "/readyz" if wait_ready else "/livez")
        yield server
    finally:
        if process.poll() is None:
            server.terminate()


def _follow(server: RunningServer) -> dict[str, str]:
    """Collect the server's output on a thread; the returned dict fills with the serving line's
    addresses when it appears."""
    found: dict[str, str] = {}

    def read() -> None:
        assert server.process.stdout is not None
        for line in server.process.stdout:
            server.output.append(line)
            if not found and (match := SERVING_LINE.search(line)):
                found.update(match.groupdict())

    threading.Thread(target=read, daemon=True).start()
    return found


def _wait_until_ready(server: RunningServer, serving: dict[str, str], timeout_s: float, probe: str) -> None:
    """Until ``probe`` answers 200; then the server's addresses are set."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            time.sleep(0.1)  # let the reader thread take the last lines
            raise ServerProcessError(f"the server exited with {server.process.returncode}:\n{server.log()}")
        if serving:
            try:
                if httpx.get(serving["rest"] + probe, timeout=2).status_code == 200:
                    server.rest_url = serving["rest"]
                    server.grpc_target = None if serving["grpc"] == "off" else serving["grpc"]
                    return
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    server.process.kill()
    server.process.wait()
    raise ServerProcessError(f"the server was not ready within {timeout_s} s:\n{server.log()}")


MetricSamples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(rest_url: str, headers: Mapping[str, str] | None = None) -> MetricSamples:
    """Every sample of the service's ``/metrics``."""
    return parse_metrics(httpx.get(rest_url + "/metrics", timeout=10, headers=headers).text)


def parse_metrics(text: str) -> MetricSamples:
    """Prometheus text exposition -> {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: MetricSamples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)
