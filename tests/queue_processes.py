"""Real processes for the scaled-out tests and the benchmark: a private ``redis-server`` on a free
port (stopped and restarted at will; the shared one on 6379 is never touched) and ``fsfm worker``
subprocesses, configured through ``FSFM_*`` variables as an operator would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.servers import REPO_ROOT, settings_env

WORKER_STOP_BOUND_S = 10.0  # SIGTERM -> exit: the batch in hand, one blocking read, leaving the group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A ``redis-server`` of this test's own, keeping nothing on disk, on a port fixed at creation so
    that a restart comes back at the same URL."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.port = free_port()
        self.command = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung or swapped-out Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Gone at once, like a crashed or partitioned Redis (and, with no persistence, its data too)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RunningWorker:
    process: subprocess.Popen[str]
    consumer: str
    http_url: str  # /metrics, /healthz, /readyz
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)

    def terminate(self) -> None:
        """SIGTERM; asserts a clean exit within the bound."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=WORKER_STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the worker did not exit within {WORKER_STOP_BOUND_S} s of SIGTERM:\n{self.log()}"
            ) from None
        assert code == 0, f"the worker exited with {code}:\n{self.log()}"


@contextmanager
def running_worker(
    models: Path,
    queue_url: str,
    consumer: str,
    settings: Mapping[str, object] | None = None,
    startup_timeout_s: float = 60.0,
) -> Iterator[RunningWorker]:
    """``fsfm worker`` on ``models``; ``settings`` are WorkerSettings fields. Yields once ``/readyz``
    answers 200; stops it with SIGTERM unless the test ended it."""
    port = free_port()
    chosen = {"queue": queue_url, "metrics_port": port, "consumer": consumer, "host": "127.0.0.1", **(settings or {})}
    env = {**os.environ, **settings_env(chosen), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fsfm_cli", "worker", "--models", str(models)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = RunningWorker(process, consumer, f"http://127.0.0.1:{port}")
    threading.Thread(target=lambda: worker.output.extend(iter(process.stdout.readline, "")), daemon=True).start()
    try:
        _wait_until_ready(worker, startup_timeout_s)
        yield worker
    finally:
        if process.poll() is None:
            worker.terminate()


def _wait_until_ready(worker: RunningWorker, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            time.sleep(0.1)
            raise AssertionError(f"the worker exited with {worker.process.returncode}:\n{worker.log()}")
        try:
            if httpx.get(worker.http_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    worker.process.kill()
    raise AssertionError(f"the worker was not ready within {timeout_s} s:\n{worker.log()}")
