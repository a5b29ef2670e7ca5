"""Checkpoint writing shared by every training run.

Contract: ``save_atomic`` writes to a hidden temporary file beside the target and renames it into place,
so a reader (or a resume after a crash) sees either the previous file or the complete new one, never a
partial write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through ``.<name>.tmp`` and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
