"""Per-stream state, keyed by stream id: a gRPC ``Analyze`` stream and an uploaded video alike.

A stream is opened by ``AnalysisCore.open_stream`` and closed (in a ``finally``) by whoever opened
it. Its frames are analysed concurrently (a door pipelines them) but settle into the aggregate in
the order of their ``sequence`` (0, 1, 2, ...): a frame waits for its predecessors, so every frame's
snapshot covers exactly the frames before it. A frame that fails settles as a failure, and its
snapshot waits for the door in ``failed`` until taken. Memory is bounded: at most
``MAX_OPEN_STREAMS`` streams, each holding its window of frame reports, its live face tracks (running
scores and their latest segments: a few per face in view, ``fsfm/tracking.py``) and the snapshots of
failed frames not yet answered (a door answers them in order, so at most its pipeline depth). An
uploaded video's stream (``keep_tracks``) keeps every track with its frames: bounded by its frames.
"""

from __future__ import annotations

import asyncio
import uuid

from service.core.report import AGGREGATE_WINDOW_FRAMES, AggregateSnapshot, Report, StreamAggregate
from service.errors import BadInput, Unavailable

MAX_OPEN_STREAMS = 10_000  # ~30 frame reports each: tens of MB at most, far beyond the connections a node takes


class Stream:
    def __init__(self, window: int, keep_tracks: bool = False) -> None:
        self.aggregate = StreamAggregate(window, keep_tracks)
        self.failed: dict[int, AggregateSnapshot] = {}
        self._turn = 0  # the sequence number that settles next
        self._turn_changed = asyncio.Condition()

    async def settle(self, sequence: int, report: Report | None) -> AggregateSnapshot:
        """Add the frames of request ``sequence`` (None: it failed) once every earlier request has settled."""
        async with self._turn_changed:
            await self._turn_changed.wait_for(lambda: self._turn == sequence)
            if report is None:
                self.aggregate.add_failure()
            else:
                for frame in report.frames:
                    self.aggregate.add(frame, report.model, report.threshold)
            snapshot = self.aggregate.snapshot()
            if report is None:
                self.failed[sequence] = snapshot
            self._turn += 1
            self._turn_changed.notify_all()
        return snapshot


class Streams:
    """The open streams of one core."""

    def __init__(self, max_open: int = MAX_OPEN_STREAMS) -> None:
        self._open: dict[str, Stream] = {}
        self._max_open = max_open

    def open(self, window: int = AGGREGATE_WINDOW_FRAMES, keep_tracks: bool = False) -> str:
        if len(self._open) >= self._max_open:
            raise Unavailable("too_many_streams", f"{self._max_open} streams are open; retry when one closes")
        stream_id = uuid.uuid4().hex
        self._open[stream_id] = Stream(window, keep_tracks)
        return stream_id

    def close(self, stream_id: str) -> None:
        self._open.pop(stream_id, None)

    def get(self, stream_id: str) -> Stream:
        try:
            return self._open[stream_id]
        except KeyError:
            raise BadInput("unknown_stream", f"no open stream {stream_id!r}") from None

    def __len__(self) -> int:
        return len(self._open)
