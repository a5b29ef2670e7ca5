"""The service as a real subprocess on loopback for the REST, gRPC and scale tests: the helpers of
``service.local_server``, which ``fsfm bench serve`` uses too."""

from __future__ import annotations

from pathlib import Path

from service.local_server import RunningServer, metric, running_server, scrape, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "RunningServer", "metric", "running_server", "scrape", "settings_env"]
