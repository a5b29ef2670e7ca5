"""The core's per-stream state: frames analysed concurrently settle into their stream's aggregate in
the order they were sent, failures included, and the number of open streams is bounded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fsfm.analysis import FaceResult, Verdict
from fsfm.face.types import DetectedFace
from fsfm.package import ModelRepository
from service.core import FrameReport, Report
from service.core.streams import Streams
from service.errors import Unavailable
from tests.packages import make_tiny_package


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    make_tiny_package(repo, name="tiny-deepfake")
    return ModelRepository(repo).get("tiny-deepfake").manifest


def one_face(manifest, score: float) -> Report:
    """A frame with one face, at the same place in every frame (one track)."""
    landmarks = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    face = DetectedFace(np.array([0, 0, 100, 100], np.float32), landmarks, 0.99)
    frame = FrameReport(0, 0.0, [FaceResult(face, score, "x", 0.5)])
    return Report("id", manifest, 0.5, "default", [frame], Verdict(None, None))


def test_frames_settle_in_the_order_sent_whatever_order_they_finish_in(manifest) -> None:
    outcomes = [one_face(manifest, 0.2), None, one_face(manifest, 0.8), one_face(manifest, 0.4)]  # None: failed

    async def scenario() -> list:
        streams = Streams()
        stream_id = streams.open()
        stream = streams.get(stream_id)
        finishing = [asyncio.create_task(stream.settle(i, outcomes[i])) for i in reversed(range(len(outcomes)))]
        snapshots = (await asyncio.gather(*finishing))[::-1]
        assert set(stream.failed) == {1} and stream.failed[1] == snapshots[1]
        streams.close(stream_id)
        assert len(streams) == 0
        return snapshots

    snapshots = asyncio.run(scenario())
    assert [(s.frames_seen, s.frames_failed, s.window_frames) for s in snapshots] == [
        (1, 0, 1),
        (2, 1, 1),
        (3, 1, 2),
        (4, 1, 3),
    ]
    assert [s.max_score for s in snapshots] == [0.2, 0.2, 0.8, 0.8]
    assert snapshots[-1].verdict.score == pytest.approx((0.2 + 0.8 + 0.4) / 3)  # its one track's mean
    assert snapshots[-1].verdict.track_id == 1 and [t.track_id for t in snapshots[-1].tracks] == [1]


def test_open_streams_are_bounded() -> None:
    streams = Streams(max_open=2)
    first = streams.open()
    streams.open()
    with pytest.raises(Unavailable) as refused:
        streams.open()
    assert refused.value.reason == "too_many_streams"
    streams.close(first)
    streams.open()
