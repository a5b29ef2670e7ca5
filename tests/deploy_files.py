"""Reading the deployment files for the tests: the metric names the service exports, the PromQL that
the Grafana dashboard and the Prometheus rules run on them, and the Docker build context that
.dockerignore leaves (Docker's rules: a pattern matches a path relative to the context root, ``*`` and
``?`` within one path segment, ``**`` across any number; a match excludes everything below it; later
``!`` patterns re-include)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern.strip("/"))
    globs = ((r"\*\*/", "(?:.*/)?"), (r"/\*\*", "(?:/.*)?"), (r"\*\*", ".*"), (r"\*", "[^/]*"), (r"\?", "[^/]"))
    for glob, replacement in globs:
        regex = regex.replace(glob, replacement)
    return re.compile(regex)


def dockerignore_rules(path: Path = REPO_ROOT / ".dockerignore") -> list[tuple[bool, re.Pattern[str]]]:
    """(re-include, pattern) for each rule of ``path``, in order."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert not any("[" in rule for rule in rules), "character classes are not supported here"
    return [(rule.startswith("!"), _ignore_pattern(rule.lstrip("!"))) for rule in rules]


def in_build_context(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether .dockerignore leaves ``relative`` (a file path under the context root) in the context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for reinclude, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = reinclude
    return included


def tracked_files(repo: Path = REPO_ROOT) -> list[str]:
    """The files a clean checkout of ``repo`` holds (committed or staged: ``git ls-files``)."""
    return subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()


def docker_build_context(checkout: Path, dest: Path) -> Path:
    """Copies into ``dest`` the files of the clean ``checkout`` that its .dockerignore leaves: what
    ``docker build`` sends as the context."""
    rules = dockerignore_rules(checkout / ".dockerignore")
    for relative in tracked_files(checkout):
        if in_build_context(relative, rules):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(checkout / relative, dest / relative)
    return dest
