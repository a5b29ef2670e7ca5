"""``WorkerSettings``: the service's ``Settings`` (models, engine, batching, ``queue``) plus what only workers
need, from ``FSFM_*`` environment variables and ``fsfm worker`` flags (flags win). A module of its own, free of
the worker's runtime (Redis, uvicorn), so that ``fsfm worker --help`` can show every field's default cheaply.

Contract: ``queue`` must be a Redis URL (``redis://``, ``rediss://`` or ``unix://``); the inherited default,
``local``, is refused with a message naming ``FSFM_QUEUE`` and ``--queue``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from service.settings import Settings


def _consumer_name() -> str:
    from service.redis_queue import node_name  # the queue's own naming; it imports the Redis client

    return node_name()


class WorkerSettings(Settings):
    """``Settings`` (models, engine, batching, ``queue``) plus what only workers need."""

    claim_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a face held this long by a worker without an answer is claimed by another worker; "
        "must exceed the longest batch time",
    )
    max_deliveries: int = Field(default=3, ge=1, description="deliveries of a failing face before it is dead-lettered")
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="worker /metrics, /healthz, /readyz port")
    consumer: str = Field(default_factory=_consumer_name, description="this worker's name in the consumer group")

    @model_validator(mode="after")
    def _redis_queue(self) -> WorkerSettings:  # after: the inherited default ("local") is checked too
        if not self.queue.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"a worker needs a Redis URL in FSFM_QUEUE or --queue (redis://host:6379/0), not {self.queue!r}"
            )
        return self
