"""``fsfm worker``, registered in ``fsfm.cli`` beside ``fsfm serve``, with the same conventions: every
option is a ``WorkerSettings`` field that may also come from its ``FSFM_*`` variable (flags win), and
the heavy imports live in the body."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.commands import configure_logging, option, settings_or_exit


def worker(
    queue: Optional[str] = option("queue", "Redis URL of the queue, e.g. redis://redis:6379/0 (required)."),
    models: Optional[Path] = option("models", "Model repository folder; every package in it is run."),
    host: Optional[str] = option("host", "Bind address of /metrics, /healthz and /readyz."),
    metrics_port: Optional[int] = option("metrics_port", "Port of /metrics, /healthz and /readyz; 0 picks one."),
    engine: Optional[str] = option("engine", "onnxruntime | tensorrt | torch."),
    engine_threads: Optional[int] = option("engine_threads", "ONNX Runtime intra-op threads."),
    precision: Optional[str] = option("precision", "fp32 | int8 (each package's variant from `fsfm quantize`)."),
    max_batch_size: Optional[int] = option("max_batch_size", "Faces per engine call, at most."),
    max_queue_delay_ms: Optional[float] = option("max_queue_delay_ms", "Longest wait for a batch to fill."),
    claim_timeout_s: Optional[float] = option(
        "claim_timeout_s", "Faces held this long by a silent worker are claimed; must exceed a batch's time."
    ),
    max_deliveries: Optional[int] = option("max_deliveries", "Deliveries of a failing face before dead-lettering."),
    consumer: Optional[str] = option("consumer", "Name in the consumer group (default: host-pid-random)."),
    log_level: str = typer.Option("info", envvar="FSFM_LOG_LEVEL", show_envvar=True, help="debug | info | warning"),
) -> None:
    """Run the repository's models for API nodes (scaled-out mode): take batches of faces from the
    Redis queue, infer, reply to the waiting API node. Any number of workers may share a queue.
    SIGTERM finishes the batch in hand, then exits."""
    from service.worker import WorkerSettings, run_worker

    fields = WorkerSettings.model_fields
    flags = {name: value for name, value in locals().items() if name in fields and value is not None}
    settings = settings_or_exit(WorkerSettings, flags)
    configure_logging(log_level)
    code = run_worker(settings)
    if code:
        raise typer.Exit(code)
