"""``fsfm worker``, registered in ``fsfm.cli`` beside ``fsfm serve``, with the same conventions: every
option is a ``WorkerSettings`` field that may also come from its ``FSFM_*`` variable (flags win), and
the heavy imports live in the body."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.commands import _option


def worker(
    queue: Optional[str] = _option("queue", "Redis URL of the queue, e.g. redis://redis:6379/0 (required)."),
    models: Optional[Path] = _option("models", "Model repository folder; every package in it is run."),
    host: Optional[str] = _option("host", "Bind address of /metrics, /healthz and /readyz."),
    metrics_port: Optional[int] = _option("metrics_port", "Port of /metrics, /healthz and /readyz; 0 picks one."),
    engine: Optional[str] = _option("engine", "onnxruntime | tensorrt | torch."),
    engine_threads: Optional[int] = _option("engine_threads", "ONNX Runtime intra-op threads."),
    max_batch_size: Optional[int] = _option("max_batch_size", "Faces per engine call, at most."),
    max_queue_delay_ms: Optional[float] = _option("max_queue_delay_ms", "Longest wait for a batch to fill."),
    claim_timeout_s: Optional[float] = _option(
        "claim_timeout_s", "Faces held this long by a silent worker are claimed; must exceed a batch's time."
    ),
    max_deliveries: Optional[int] = _option("max_deliveries", "Deliveries of a failing face before dead-lettering."),
    consumer: Optional[str] = _option("consumer", "Name in the consumer group (default: host-pid-random)."),
    log_level: str = typer.Option("info", envvar="FSFM_LOG_LEVEL", show_envvar=True, help="debug | info | warning"),
) -> None:
    """Run the repository's models for API nodes (scaled-out mode): take batches of faces from the
    Redis queue, infer, reply to the waiting API node. Any number of workers may share a queue.
    SIGTERM finishes the batch in hand, then exits."""
    import logging

    from pydantic import ValidationError

    from service.worker import WorkerSettings, run_worker

    fields = WorkerSettings.model_fields
    flags = {name: value for name, value in locals().items() if name in fields and value is not None}
    try:
        settings = WorkerSettings(**flags)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = run_worker(settings)
    if code:
        raise typer.Exit(code)
