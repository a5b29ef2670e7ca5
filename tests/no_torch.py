"""Run a subprocess in which ``import torch`` fails, as in the slim serving image.

A shadow ``torch`` package placed first on PYTHONPATH raises ImportError on import, which is what
Python does when torch is not installed; the real torch in the virtualenv is never reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MESSAGE = "No module named 'torch' (blocked by the test to mimic the slim serving image)"


def torchless_env(tmp_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    shadow = tmp_path / "no-torch"
    (shadow / "torch").mkdir(parents=True, exist_ok=True)
    (shadow / "torch" / "__init__.py").write_text(f"raise ImportError({MESSAGE!r})\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def run_without_torch(tmp_path: Path, args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``python args...`` with torch unimportable; the caller asserts on the result."""
    return subprocess.run(
        [sys.executable, *args], env=torchless_env(tmp_path), capture_output=True, text=True, timeout=timeout, **kwargs
    )
