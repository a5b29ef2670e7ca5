"""Reading the monitoring files of deploy/ for the tests: the metric names the service exports, and
the PromQL that the Grafana dashboard and the Prometheus rules run on them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from service.metrics import Metrics
from service.redis_queue import QueueMetrics
from tests.servers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def load_all(path: Path) -> list[dict]:
    """The YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def exported_names() -> set[str]:
    """Every sample name an API node or a worker can expose (counters with _total, histograms with
    their _bucket/_sum/_count series)."""
    registry = Metrics().registry
    QueueMetrics(registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


def _rules() -> list[dict]:
    groups = load_all(DEPLOY / "prometheus" / "rules.yml")[0]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recording_rules() -> dict[str, str]:
    """Recorded name -> its expression."""
    return {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in _rules() if "alert" in rule]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fsfm.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
