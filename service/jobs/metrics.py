"""The jobs' Prometheus series, in the registry of the core's ``Metrics`` (created once per registry,
as the queue's are: ``service/redis_queue.py``). Names and meanings: docs/api.md, "Metrics"."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.metrics import Metrics


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.pending = Gauge("fsfm_jobs", "Jobs of this node not yet finished, by state.", ["state"], registry=r)
        self.finished = Counter(
            "fsfm_jobs_finished", "Jobs of this node that finished, by status.", ["status"], registry=r
        )
        self.deliveries = Counter(
            "fsfm_webhook_deliveries",
            "Webhook deliveries, by outcome: delivered (a 2xx answer) or failed (other status, timeout, no answer).",
            ["outcome"],
            registry=r,
        )


_JOB_METRICS: weakref.WeakKeyDictionary[Metrics, JobMetrics] = weakref.WeakKeyDictionary()


def job_metrics(metrics: Metrics) -> JobMetrics:
    """The ``JobMetrics`` of ``metrics``' registry, created once."""
    if metrics not in _JOB_METRICS:
        _JOB_METRICS[metrics] = JobMetrics(metrics.registry)
    return _JOB_METRICS[metrics]
