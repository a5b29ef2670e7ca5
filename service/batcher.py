"""Dynamic batching per model, with Triton's semantics.

Faces from every request and stream queue up as single items. A batch is dispatched as soon as it
holds ``max_batch_size`` faces, or when the oldest queued face has waited ``max_queue_delay_ms``;
while the engine is busy the queue keeps filling, so under load batches grow by themselves. The
engine runs on its own thread, off the event loop, one batch at a time.

The queue is bounded (``max_queue_size`` faces): a request that does not fit is refused at once
(``Overloaded``), never queued. A request that is cancelled or whose deadline passes has its faces
removed from the queue at that moment, even while the engine is busy with another batch; once every
face of the batch the engine is running has been cancelled, the run itself stops where the engine
can (``cancellable``: ONNX Runtime, OpenVINO), so work nobody waits for does not hold the next.

Every named output of the engine travels back, each face its row of each (``InferenceResult.outputs``).
``stop`` closes the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fsfm.engines.base import Engine, EngineCancelled, RunCancellation
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, Unavailable
from service.metrics import Metrics

Rows = dict[str, np.ndarray]  # one face's row of each named output


@dataclass
class InferenceResult:
    """Model outputs for one request's faces, in order, and where its time went."""

    outputs: dict[str, np.ndarray]  # every named output, each (n, ...); none for no faces
    queue_s: float  # longest wait of its faces before their batch started
    infer_s: float  # engine time of the (last) batch that carried its faces


def stack_rows(rows: list[Rows]) -> dict[str, np.ndarray]:
    """Faces' rows (the same output names each) -> each output stacked, (n, ...)."""
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]} if rows else {}


def split_rows(outputs: dict[str, np.ndarray], n: int) -> list[Rows]:
    """An engine's outputs for a batch of ``n`` -> each face's rows; outputs without the batch as
    their first axis are an engine error."""
    if wrong := {name: array.shape for name, array in outputs.items() if array.ndim == 0 or len(array) != n}:
        raise ValueError(f"outputs without the batch of {n} as their first axis: {wrong}")
    return [{name: array[i] for name, array in outputs.items()} for i in range(n)]


@dataclass(eq=False)
class _Face:
    # No repr of the tensor: something formatted every face of a cancelled request (1.7 s of the
    # event loop for a batch of 2048 faces, ~50 ms for 64).
    tensor: np.ndarray = field(repr=False)  # (3, S, S) float32
    future: asyncio.Future[tuple[Rows, float, float]] = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(
        self,
        engine: Engine,
        model_label: str,
        metrics: Metrics,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        max_queue_size: int = 256,
    ) -> None:
        self.engine = engine
        self.model_label = model_label
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._queue: deque[_Face] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{model_label}")
        self._task: asyncio.Task[None] | None = None
        self._batch_seconds = 0.0  # running estimate of one batch's engine time, for Retry-After

    @property
    def pending(self) -> int:
        return len(self._queue)

    def health_error(self) -> str | None:
        return None if self._task is not None else "the batcher is not running"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._dispatch_loop(), name=f"batcher-{self.model_label}"
            )

    async def stop(self) -> None:
        """Stop dispatching; faces still queued fail as unavailable; close the engine."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue:
            face = self._queue.popleft()
            if not face.future.done():
                face.future.set_exception(Unavailable("shutting_down", "the service is shutting down"))
        self._update_pending()
        self._executor.shutdown(wait=True)
        self.engine.close()

    async def infer(self, tensors: np.ndarray, deadline: float | None = None) -> InferenceResult:
        """Queue ``tensors`` (n, 3, S, S) and wait for their outputs. ``deadline`` is a
        ``time.monotonic()`` instant; past it the faces leave the queue and DeadlineExceeded is raised."""
        if self._task is None:
            raise Unavailable("not_ready", f"model {self.model_label} is not running")
        n = len(tensors)
        if n == 0:
            return InferenceResult({}, 0.0, 0.0)
        if len(self._queue) + n > self.max_queue_size:
            raise Overloaded(
                f"model {self.model_label}: {len(self._queue)} faces queued, limit {self.max_queue_size}",
                retry_after_s=max(1.0, self._batch_seconds * (len(self._queue) / self.max_batch_size + 1)),
            )
        loop = asyncio.get_running_loop()
        faces = [_Face(tensor, loop.create_future()) for tensor in tensors]
        for face in faces:
            face.future.add_done_callback(self._forget_if_cancelled(face))
        self._queue.extend(faces)
        self._update_pending()
        self._arrived.set()
        waiting = asyncio.gather(*(f.future for f in faces))
        # A cancelled or timed-out request leaves the gather's exception unread; read it here.
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            outputs = await asyncio.wait_for(waiting, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise DeadlineExceeded() from None
        finally:
            for face in faces:  # a failure or cancellation of one face frees the others' slots too
                if not face.future.done():
                    face.future.cancel()
        rows, queue_s, infer_s = zip(*outputs, strict=False)
        return InferenceResult(stack_rows(list(rows)), max(queue_s), max(infer_s))

    def _forget_if_cancelled(self, face: _Face):
        def callback(future: asyncio.Future) -> None:
            if future.cancelled():
                try:
                    self._queue.remove(face)
                except ValueError:
                    pass  # already taken into a batch
                self._update_pending()

        return callback

    @staticmethod
    def _cancellation(batch: list[_Face]) -> RunCancellation:
        """The run's cancellation, cancelled once every face of ``batch`` has been (their requests
        ended: a client gone, a deadline passed)."""
        cancellation = RunCancellation()
        waited_for = len(batch)  # batches are taken from the queue, which holds no cancelled face

        def abandoned(future: asyncio.Future) -> None:
            nonlocal waited_for
            if future.cancelled():
                waited_for -= 1
                if waited_for == 0:
                    cancellation.cancel()

        for face in batch:
            face.future.add_done_callback(abandoned)
        return cancellation

    def _update_pending(self) -> None:
        self.metrics.pending.labels(self.model_label).set(len(self._queue))

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Wait for a full batch, or until the oldest face has waited max_queue_delay.
            while len(self._queue) < self.max_batch_size:
                remaining = self._queue[0].enqueued + self.max_queue_delay_s - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
                if not self._queue:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]
            self._update_pending()
            if batch:
                await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Face]) -> None:
        started = time.monotonic()
        try:
            stacked = np.stack([face.tensor for face in batch])
            run: Callable[[], dict[str, np.ndarray]] = partial(self.engine.run, stacked)
            if getattr(self.engine, "cancellable", False):
                run = partial(self.engine.run, stacked, cancellation=self._cancellation(batch))
            outputs = await loop.run_in_executor(self._executor, run)
            rows = split_rows(outputs, len(batch))
        except EngineCancelled:
            return  # every face of the batch had been cancelled: nobody waits for it
        except Exception as exc:  # an engine failure fails this batch only, never the loop
            error = InferenceFailed("inference_failed", f"model {self.model_label}: {exc}")
            for face in batch:
                if not face.future.done():
                    face.future.set_exception(error)
            return
        infer_s = time.monotonic() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * infer_s if self._batch_seconds else infer_s
        label = self.model_label
        self.metrics.batch_execution_count.labels(label).inc()
        self.metrics.batch_size.labels(label).observe(len(batch))
        self.metrics.inference_count.labels(label).inc(len(batch))
        for face, row in zip(batch, rows, strict=False):
            if not face.future.done():
                face.future.set_result((row, started - face.enqueued, infer_s))
