"""``fsfm worker``, registered in ``fsfm_cli`` beside ``fsfm serve``, with the same conventions: every
option is a ``WorkerSettings`` field that may also come from its ``FSFM_*`` variable (flags win), its help
shows the field's default and choices, and the heavy imports live in the body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fsfm.flags import ENGINE_CHOICE, PrecisionChoice, plain
from service.commands import configure_logging, log_level_option, option, settings_or_exit
from service.worker_settings import WorkerSettings


def _flag(field: str, help: str, **kwargs: Any) -> Any:
    return option(field, help, WorkerSettings, **kwargs)


def worker(
    queue: str | None = _flag(
        "queue", "Redis URL of the queue, e.g. redis://redis:6379/0 (required).", state_default=False
    ),
    models: Path | None = _flag("models", "Model repository folder; every package in it is run."),
    host: str | None = _flag("host", "Bind address of /metrics, /healthz and /readyz."),
    metrics_port: int | None = _flag("metrics_port", "Port of /metrics, /healthz and /readyz; 0 picks one."),
    engine: str | None = _flag("engine", "Inference engine; auto chooses one per package.", **ENGINE_CHOICE),
    engine_threads: int | None = _flag("engine_threads", "ONNX Runtime intra-op threads (default: every core)."),
    precision: PrecisionChoice | None = _flag(
        "precision", "Precision to run; each package carries the variant (e.g. int8 from `fsfm quantize`)."
    ),
    accept_drift: bool | None = _flag(
        "accept_drift", "Run a precision asked for although its recorded drift exceeds the tolerance."
    ),
    max_batch_size: int | None = _flag("max_batch_size", "Faces per engine call, at most."),
    max_queue_delay_ms: float | None = _flag("max_queue_delay_ms", "Longest wait for a batch to fill, in ms."),
    claim_timeout_s: float | None = _flag(
        "claim_timeout_s", "Seconds after which faces held by a silent worker are claimed; must exceed a batch's time."
    ),
    max_deliveries: int | None = _flag("max_deliveries", "Deliveries of a failing face before dead-lettering."),
    consumer: str | None = _flag("consumer", "Name in the consumer group (default: host-pid-random)."),
    log_level: str = log_level_option(),
) -> None:
    """Run the repository's models for API nodes (scaled-out mode).

    Takes batches of faces from the Redis queue, infers, and replies to the waiting API node. Any number of
    workers may share a queue. SIGTERM finishes the batch in hand, then exits.
    """
    from service.worker import run_worker

    fields = WorkerSettings.model_fields
    flags = {name: plain(value) for name, value in locals().items() if name in fields and value is not None}
    settings = settings_or_exit(WorkerSettings, flags)
    configure_logging(log_level)
    code = run_worker(settings)
    if code:
        raise typer.Exit(code)
