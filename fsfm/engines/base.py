"""The engine interface shared by the detector, ``fsfm analyze``, the service's batcher and the worker.

An engine has a lifecycle, as Triton's python_backend models do (``initialize`` / ``execute`` /
``finalize``): it is made by its registry entry (``fsfm.engines.registry``), runs batches and
returns every named output, and is closed when its owner stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from fsfm.engines.select import Selection


class EngineError(RuntimeError):
    """An engine could not be chosen, loaded or run."""


class EngineCancelled(EngineError):
    """A run was stopped through its ``RunCancellation`` before it finished."""


class RunCancellation:
    """Stops one run of a cancellable engine from another thread.

    An engine whose ``cancellable`` is True takes ``run(batch, cancellation=...)``: it ``hook``s a
    callback that stops its runtime's run (ONNX Runtime's ``RunOptions.terminate``, OpenVINO's
    ``InferRequest.cancel``), and raises ``EngineCancelled`` when the run was stopped, or when
    ``cancel`` came before the run began. One object per run, so a late ``cancel`` never reaches
    another run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._hooks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            hooks, self._hooks = self._hooks, []
        for stop in hooks:
            stop()

    def hook(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` on ``cancel``; raises ``EngineCancelled`` if that has already happened."""
        with self._lock:
            if not self._cancelled:
                self._hooks.append(stop)
                return
        raise EngineCancelled("the run was cancelled before it began")


@runtime_checkable
class Engine(Protocol):
    """A loaded model that maps one float32 input batch to its named outputs.

    ``run`` is synchronous and may be slow; callers on an event loop run it in a thread.
    Implementations must be safe to call from one thread at a time (the batcher guarantees it).
    An engine whose class sets ``cancellable = True`` also takes ``run(batch, cancellation=...)``
    (``RunCancellation``): the batcher stops a batch once every request in it has gone.
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
