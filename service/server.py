"""``fsfm serve``: the REST app (uvicorn) and the gRPC server in one asyncio loop over one
``AnalysisCore``.

Startup: the checks of ``service/startup.py`` run first (model repository, detector weights, TLS files;
a failure raises ``StartupError`` before anything is bound or logged as serving, and start-up warnings
name demo models and a public address without API keys); then both listeners are bound (so port 0
works and probes get answers at once), the line
``fsfm serving rest=http://HOST:PORT grpc=HOST:PORT`` is logged, then the models load and warm up;
``/readyz`` and gRPC health turn ready when that is done.

Shutdown on SIGTERM or SIGINT: readiness goes false and new work is refused (``core.drain``), work
in flight finishes within ``shutdown_grace_s``; what is still in the core then is ended
(``core.abort_in_flight``), so each door answers it with its documented error (REST: JSON 503
``shutting_down``; gRPC: UNAVAILABLE) before the servers stop. Then both servers stop
(``STOP_BOUND_S`` at most) and the process exits. A second signal skips what is left of the grace
period. Jobs still pending then (``service/jobs/runner.py``) end as failed, ``interrupted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn

from service.core import AnalysisCore
from service.rest.app import create_app
from service.settings import Settings
from service.startup import Startup, StartupError, check_startup

log = logging.getLogger("fsfm.service")

STOP_BOUND_S = 5.0  # after the drain: the longest the servers may take to close
ABORT_BOUND_S = 1.0  # after the grace: the longest the ended requests may take to leave the core


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: signals belong to the process's own loop (``serve``
    drains first; ``fsfm worker`` finishes its batch)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Signals:
    """Counts SIGTERM/SIGINT: the first starts the graceful shutdown, the second hurries it."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.second = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: int) -> None:
        log.info("received %s", signal.Signals(sig).name)
        (self.second if self.first.is_set() else self.first).set()


def listen(host: str, port: int) -> socket.socket:
    """The REST listening socket, made with an explicit ``IPPROTO_TCP``: asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections whose socket says so, and without it every
    response after the first on a keep-alive connection waited ~40 ms for the client's delayed ACK
    (measured with ``fsfm bench serve``: REST p50 84 ms vs gRPC 38 ms for the same request)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {_url_host(host)}:{port} for REST: {exc.strerror or exc}") from None
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(settings: Settings, grpc: bool = True) -> int:
    """Run until a signal; returns the process exit code (1 when the models could not be loaded)."""
    loop = asyncio.get_running_loop()
    signals = _Signals()
    signals.install(loop)
    startup = check_startup(settings, grpc=grpc)  # before anything is bound or announced
    core = AnalysisCore(settings)
    rest_socket = listen(settings.host, settings.port)
    app = create_app(core, settings)
    rest = HttpServer(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=STOP_BOUND_S,
        )
    )
    rest_task = asyncio.create_task(rest.serve(sockets=[rest_socket]), name="rest")
    grpc_server = None
    grpc_address = "off"
    if grpc:
        from service.grpc_server import start_grpc_server

        grpc_server, grpc_port = await start_grpc_server(core, settings)
        grpc_address = f"{_url_host(settings.host)}:{grpc_port}"
    rest_port = rest_socket.getsockname()[1]
    log.info(
        "fsfm serving rest=http://%s:%d grpc=%s models=%s",
        _url_host(settings.host),
        rest_port,
        grpc_address,
        startup.repository.root.resolve(),
    )

    code = await _run_until_signal(core, startup, rest_task, signals)
    await _shutdown(core, settings, rest, rest_task, grpc_server, signals)
    await app.state.jobs.stop()
    return code


async def _run_until_signal(core: AnalysisCore, startup: Startup, rest_task: asyncio.Task, signals: _Signals) -> int:
    """Load the models, then wait for a signal. A failed load or a dead REST server ends it early."""
    loading = asyncio.create_task(core.start(startup.repository, startup.detector), name="load-models")
    signalled = asyncio.create_task(signals.first.wait())
    try:
        await asyncio.wait({loading, signalled, rest_task}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            if error := loading.exception():
                log.error("cannot start serving: %s", error)
                return 1
            log.info("fsfm ready")
            await asyncio.wait({signalled, rest_task}, return_when=asyncio.FIRST_COMPLETED)
        if rest_task.done():
            log.error("the REST server stopped: %s", rest_task.exception())
            return 1
        return 0
    finally:
        for task in (loading, signalled):
            task.cancel()


async def _shutdown(
    core: AnalysisCore,
    settings: Settings,
    rest: HttpServer,
    rest_task: asyncio.Task,
    grpc_server,
    signals: _Signals,
) -> None:
    log.info("draining: new work is refused, in-flight work gets %.1f s", settings.shutdown_grace_s)
    drain = asyncio.create_task(core.drain(settings.shutdown_grace_s))
    hurry = asyncio.create_task(signals.second.wait())
    await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
    hurry.cancel()
    if not (drain.done() and drain.result()):
        drain.cancel()
        log.warning("ending %d request(s) still in flight: shutting_down", core.abort_in_flight())
        await core.drain(ABORT_BOUND_S)  # the doors answer them before the servers close
    rest.should_exit = True
    rest.force_exit = signals.second.is_set()
    stopping = [rest_task]
    if grpc_server is not None:
        stopping.append(asyncio.create_task(grpc_server.stop(0 if rest.force_exit else STOP_BOUND_S)))
    _, pending = await asyncio.wait(stopping, timeout=STOP_BOUND_S + 1)
    for task in pending:
        task.cancel()
    await core.stop()
    log.info("fsfm stopped")
