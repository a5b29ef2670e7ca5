"""The service as a real subprocess on loopback for the REST, gRPC and scale tests: the helpers of
``service.local_server``, which ``fsfm bench serve`` uses too; and ``writes_nothing``, for tests that
assert a server keeps media off the disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.local_server import RunningServer, metric, running_server, scrape, settings_env

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO_ROOT",
    "RunningServer",
    "metric",
    "running_server",
    "scrape",
    "settings_env",
    "writes_nothing",
]


@contextmanager
def writes_nothing(root: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A new empty working directory and temp directory under ``root`` for a server process:
    yields (cwd, environment with TMPDIR/TEMP/TMP pointing at the temp directory), and asserts on
    exit that nothing was written in either. Pass them as ``running_server(..., cwd=cwd, env=env)``."""
    cwd, temp = root / "server-cwd", root / "server-tmp"
    cwd.mkdir()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "TEMP": str(temp), "TMP": str(temp)}
    yield cwd, env
    written = sorted(str(path) for folder in (cwd, temp) for path in folder.rglob("*"))
    assert not written, f"the server wrote files: {written}"
