"""Prometheus metrics with Triton's semantics under the ``fsfm_`` prefix (names in the README).

Each ``Metrics`` owns its registry, so several services (tests, an API node beside a worker) never
share or double-register collectors. A part of the service with metrics of its own (the Redis queue,
the jobs) registers them as a group on that registry, once (``Metrics.group``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Group = TypeVar("Group")

STAGES = ("decode", "detect", "queue", "infer", "total")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_FACE_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_success = Counter(
            "fsfm_request_success", "Requests answered successfully.", ["model", "task", "transport"], registry=r
        )
        self.request_failure = Counter(
            "fsfm_request_failure",
            "Requests that failed, by reason.",
            ["model", "task", "transport", "reason"],
            registry=r,
        )
        self.inference_count = Counter("fsfm_inference_count", "Faces run through a model.", ["model"], registry=r)
        self.batch_execution_count = Counter(
            "fsfm_batch_execution_count", "Engine calls (batches) executed.", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "fsfm_batch_size", "Faces per engine call.", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.pending = Gauge("fsfm_pending_requests", "Faces queued, waiting for a batch.", ["model"], registry=r)
        self.stage_duration = Histogram(
            "fsfm_stage_duration_seconds",
            "Time per request stage: decode, detect, queue (wait for a batch), infer (engine), total.",
            ["stage", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.faces_per_input = Histogram(
            "fsfm_faces_per_input", "Faces detected per image or video frame.", buckets=_FACE_BUCKETS, registry=r
        )
        self.admitted = Gauge(
            "fsfm_admitted_requests",
            "Requests admitted into the core, by stage: waiting (for a preprocessing slot), preprocessing "
            "(decode, detect, crop), inference.",
            ["stage"],
            registry=r,
        )
        self.active_streams = Gauge("fsfm_grpc_active_streams", "Open gRPC Analyze streams.", registry=r)
        self.model_ready = Gauge("fsfm_model_ready", "1 when the model is loaded and warmed up.", ["model"], registry=r)
        self.model_engine = Gauge(
            "fsfm_model_engine",
            "1 for the engine and precision each model runs on in this process (auto or forced).",
            ["model", "engine", "precision"],
            registry=r,
        )
        self._groups: dict[Callable[[CollectorRegistry], object], object] = {}

    def group(self, kind: Callable[[CollectorRegistry], Group]) -> Group:
        """The metrics ``kind`` registers on this registry, made on the first call and shared after it
        (every model's queue client, every job runner of this process)."""
        if kind not in self._groups:
            self._groups[kind] = kind(self.registry)
        return self._groups[kind]  # type: ignore[return-value]  (made by ``kind``)

    def model_loaded(self, model: str, selection: dict[str, str] | None) -> None:
        """A model is ready; ``selection``: its engine's (``Selection.describe()``), where this process runs one."""
        self.model_ready.labels(model).set(1)
        if selection is not None:
            self.model_engine.labels(model, selection["engine"], selection["precision"]).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
