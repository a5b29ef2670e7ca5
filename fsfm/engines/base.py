"""The engine interface shared by the detector, ``fsfm analyze`` and the service's batcher."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """An engine could not be loaded or failed to run."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model that maps one float32 input batch to its named outputs.

    ``run`` is synchronous and may be slow; callers on an event loop run it in a thread.
    Implementations must be safe to call from one thread at a time (the batcher guarantees it).
    """

    name: str  # runtime name, e.g. "onnxruntime"
    input_name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on ``batch`` (first axis = batch) and return every output by name."""
        ...

    def warmup(self, sample: np.ndarray) -> None:
        """Run a few passes so the first real request does not pay allocation and tuning costs."""
        ...
