"""The engine interface shared by the detector, ``fsfm analyze``, the service's batcher and the worker.

An engine has a lifecycle, as Triton's python_backend models do (``initialize`` / ``execute`` /
``finalize``): it is made by its registry entry (``fsfm.engines.registry``), runs batches and
returns every named output, and is closed when its owner stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from fsfm.engines.select import Selection


class EngineError(RuntimeError):
    """An engine could not be chosen, loaded or run."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model that maps one float32 input batch to its named outputs.

    ``run`` is synchronous and may be slow; callers on an event loop run it in a thread.
    Implementations must be safe to call from one thread at a time (the batcher guarantees it).
    """

    name: str  # the registry name, e.g. "onnxruntime"
    input_name: str
    output_names: tuple[str, ...]
    selection: Selection | None  # what was chosen and why, when made through the registry

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model on ``batch`` (first axis = batch) and return every output by name, each
        with the batch as its first axis."""
        ...

    def warmup(self, sample: np.ndarray) -> None:
        """Run a few passes so the first real request does not pay allocation and tuning costs."""
        ...

    def close(self) -> None:
        """Release the runtime's resources (sessions, device memory). Safe to call twice; the
        engine does not run afterwards."""
        ...
