"""The jobs' Prometheus series, a group on the registry of the core's ``Metrics`` (``Metrics.group``,
as the queue's are). Names and meanings: docs/api.md, "Metrics"."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
