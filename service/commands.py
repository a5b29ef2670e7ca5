"""``fsfm serve``, registered in ``fsfm.cli``. The service's imports live in the body, so the CLI
stays quick for other commands and ``fsfm serve`` never pulls in training code or PyTorch.

Every option maps onto a ``service.settings.Settings`` field and may also come from its ``FSFM_*``
environment variable; flags win. Fields without a flag (``FSFM_API_KEYS``, ``FSFM_MAX_PIXELS``, ...)
come from the environment only (docs/api.md lists them all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fsfm.console import fail


_NOT_SETTINGS = ("grpc", "log_level")  # every other parameter of ``serve`` is a Settings field


def option(field: str, help: str, **kwargs: object):
    """A flag for Settings field ``field``: ``--field-name``, env var ``FSFM_FIELD_NAME``. Unset
    flags stay None so that Settings applies its own defaults (listed in docs/api.md, not repeated
    here where they could drift)."""
    return typer.Option(
        None, f"--{field.replace('_', '-')}", envvar=f"FSFM_{field.upper()}", show_envvar=True, help=help, **kwargs
    )


def serve(
    models: Optional[Path] = option("models", "Model repository folder; every package in it is served."),
    host: Optional[str] = option("host", "REST and gRPC bind address."),
    port: Optional[int] = option("port", "REST port; 0 picks a free port."),
    grpc_port: Optional[int] = option("grpc_port", "gRPC port; 0 picks a free port."),
    engine: Optional[str] = option("engine", "auto | onnxruntime | tensorrt | torch | openvino."),
    engine_threads: Optional[int] = option("engine_threads", "ONNX Runtime intra-op threads."),
    precision: Optional[str] = option("precision", "auto | fp32 | int8 | fp16 | bf16 (each package carries or derives it)."),
    queue: Optional[str] = option("queue", "local (in-process) or a redis:// URL."),
    max_batch_size: Optional[int] = option("max_batch_size", "Faces per engine call, at most."),
    max_queue_delay_ms: Optional[float] = option("max_queue_delay_ms", "Longest wait for a batch to fill."),
    max_queue_size: Optional[int] = option("max_queue_size", "Queued faces per model before 429."),
    detector: Optional[str] = option("detector", "mtcnn | retinaface."),
    detector_weights: Optional[Path] = option("detector_weights", "Detector ONNX weights."),
    min_face_size: Optional[int] = option("min_face_size", "Smallest face side searched for, px."),
    max_upload_bytes: Optional[int] = option("max_upload_bytes", "Request body limit (413)."),
    request_timeout_s: Optional[float] = option("request_timeout_s", "Per-request deadline."),
    cors_origins: Optional[str] = option("cors_origins", "Comma-separated CORS origins."),
    shutdown_grace_s: Optional[float] = option("shutdown_grace_s", "Drain time on SIGTERM."),
    grpc: bool = typer.Option(True, "--grpc/--no-grpc", help="Also serve gRPC."),
    log_level: str = typer.Option("info", envvar="FSFM_LOG_LEVEL", show_envvar=True, help="debug | info | warning"),
) -> None:
    """Serve every model of the repository over REST and gRPC (embedded mode: in-process queue,
    ONNX Runtime on CPU by default). SIGTERM drains in-flight work, then exits. API keys come from
    FSFM_API_KEYS (comma-separated), never from the command line."""
    flags = {name: value for name, value in locals().items() if name not in _NOT_SETTINGS and value is not None}
    import asyncio
    from service.server import serve as run_server
    from service.settings import Settings

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
