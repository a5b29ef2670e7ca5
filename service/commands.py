"""``fsfm serve``, registered in ``fsfm_cli``. The service's runtime (server, core) is imported in the body, so
the CLI stays quick for other commands and ``fsfm serve`` never pulls in training code or PyTorch; only
``Settings`` is imported at load, for the defaults the help states.

Every option maps onto a ``service.settings.Settings`` field and may also come from its ``FSFM_*``
environment variable; flags win. Fields without a flag (``FSFM_API_KEYS``, ``FSFM_MAX_PIXELS``, ...)
come from the environment only (docs/api.md lists them all). The help shows each field's default and,
where the values are finite, the choices, both read from where they are defined (``fsfm.flags``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from fsfm.console import fail
from fsfm.flags import ENGINE_CHOICE, PrecisionChoice, config_option, literal_choices, plain
from service.settings import Settings

_NOT_SETTINGS = ("grpc", "log_level")  # every other parameter of ``serve`` is a Settings field

DetectorChoice = literal_choices("DetectorChoice", Settings, "detector")


def option(field: str, help: str, settings: type[BaseModel] = Settings, **kwargs: Any) -> Any:
    """A flag for ``settings``' field ``field``: ``--field-name``, env var ``FSFM_FIELD_NAME``. Unset
    flags stay None so that the settings apply their own defaults, which the help states (read from the
    field, not repeated here where they could drift)."""
    name = field.replace("_", "-")
    switch = settings.model_fields[field].annotation is bool  # --name/--no-name, no value
    return config_option(
        settings,
        field,
        help,
        f"--{name}/--no-{name}" if switch else f"--{name}",
        envvar=f"FSFM_{field.upper()}",
        show_envvar=True,
        **kwargs,
    )


def log_level_option() -> Any:
    return typer.Option("info", envvar="FSFM_LOG_LEVEL", show_envvar=True, help="Log level: debug, info or warning.")


def serve(
    models: Path | None = option("models", "Model repository folder; every package in it is served."),
    host: str | None = option("host", "REST and gRPC bind address."),
    port: int | None = option("port", "REST port; 0 picks a free port."),
    grpc_port: int | None = option("grpc_port", "gRPC port; 0 picks a free port."),
    engine: str | None = option("engine", "Inference engine; auto chooses one per package.", **ENGINE_CHOICE),
    engine_threads: int | None = option("engine_threads", "ONNX Runtime intra-op threads (default: every core)."),
    precision: PrecisionChoice | None = option(
        "precision", "Precision to run; each package carries the variant or the engine derives it."
    ),
    accept_drift: bool | None = option(
        "accept_drift", "Serve a precision asked for although its recorded drift exceeds the tolerance."
    ),
    queue: str | None = option("queue", "Face queue: local (in-process) or a redis:// URL."),
    max_batch_size: int | None = option("max_batch_size", "Faces per engine call, at most."),
    max_queue_delay_ms: float | None = option("max_queue_delay_ms", "Longest wait for a batch to fill, in ms."),
    max_queue_size: int | None = option("max_queue_size", "Queued faces per model before 429."),
    max_concurrent_requests: int | None = option(
        "max_concurrent_requests", "Requests in decode, detect and crop at once."
    ),
    max_waiting_requests: int | None = option(
        "max_waiting_requests", "Requests waiting for a preprocessing slot before 429."
    ),
    detector: DetectorChoice | None = option("detector", "Face detector."),
    detector_weights: Path | None = option("detector_weights", "Detector ONNX weights (default: the fsfm cache)."),
    min_face_size: int | None = option("min_face_size", "Smallest face side searched for, in pixels."),
    max_upload_bytes: int | None = option("max_upload_bytes", "Request body limit in bytes (413 above it)."),
    request_timeout_s: float | None = option("request_timeout_s", "Per-request deadline in seconds."),
    cors_origins: str | None = option("cors_origins", "Comma-separated CORS origins (default: none, CORS off)."),
    shutdown_grace_s: float | None = option("shutdown_grace_s", "Drain time on SIGTERM, in seconds."),
    grpc: bool = typer.Option(True, "--grpc/--no-grpc", help="Also serve gRPC."),
    log_level: str = log_level_option(),
) -> None:
    """Serve every model of the repository over REST and gRPC.

    Embedded mode by default: an in-process queue, and for each package the engine and precision that
    `--engine auto` chooses for this CPU or GPU (docs/engines.md). SIGTERM drains in-flight work, then exits.
    API keys come from FSFM_API_KEYS (comma-separated), never from the command line.
    """
    flags = {name: plain(value) for name, value in locals().items() if name not in _NOT_SETTINGS and value is not None}
    import asyncio

    from service.server import serve as run_server
    from service.startup import StartupError

    settings = settings_or_exit(Settings, flags)
    configure_logging(log_level)
    try:
        code = asyncio.run(run_server(settings, grpc=grpc))
    except StartupError as exc:
        fail(str(exc))
    if code:
        raise typer.Exit(code)


def settings_or_exit(settings_class: type, flags: dict):
    """Build the settings, or print every invalid field on one line and exit 2 (no traceback)."""
    from pydantic import ValidationError

    try:
        return settings_class(**flags)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None


def configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
