"""The service detects with every core when a request is alone and with a one-thread copy when others
are in flight (``service/core/detection.py``): the copy is made at start, chosen by admission's count,
and finds the same faces."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from fsfm.face.detector import DetectorConfig, FaceDetector, create_detector
from fsfm.face.types import DetectedFace
from fsfm.imaging import read_image_file
from service.core import AnalysisCore, AnalysisOptions, AnalysisRequest, RequestContext
from service.core.detection import LoadAwareDetector
from service.settings import Settings


class Counting:
    """A real detector that counts its calls."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner, self.calls = inner, 0

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        return self.inner.detect(image)


def test_the_copy_is_chosen_by_the_load_and_finds_the_same_faces(group_photo_path) -> None:
    group_photo = read_image_file(group_photo_path)
    lone, shared = Counting(create_detector()), Counting(create_detector(DetectorConfig(threads=1)))
    busy = [False]
    detector = LoadAwareDetector(lone, shared, lambda: not busy[0])
    alone = detector.detect(group_photo)
    busy[0] = True
    loaded = detector.detect(group_photo)
    assert (lone.calls, shared.calls) == (1, 1)
    assert len(alone) == len(loaded) == 6
    for a, b in zip(alone, loaded, strict=True):
        np.testing.assert_allclose(a.box, b.box, atol=1e-3)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
    assert LoadAwareDetector(lone, None, lambda: False).detect(group_photo) and lone.calls == 2


def test_the_core_detects_alone_with_every_core_and_beside_others_with_one(models, astronaut_jpeg) -> None:
    async def scenario() -> None:
        core = AnalysisCore(Settings(models=models))
        await core.start()
        try:
            detector = core.detector
            assert isinstance(detector, LoadAwareDetector) and detector.shared is not None
            detector.lone, detector.shared = Counting(detector.lone), Counting(detector.shared)

            def request() -> AnalysisRequest:
                context = RequestContext("test", time.monotonic() + 60)
                return AnalysisRequest(AnalysisOptions(task="deepfake"), context, media=astronaut_jpeg)

            await core.analyze(request())
            assert (detector.lone.calls, detector.shared.calls) == (1, 0)
            await asyncio.gather(*(core.analyze(request()) for _ in range(4)))
            assert detector.shared.calls >= 3  # at least the requests admitted beside another
        finally:
            await core.stop()

    asyncio.run(scenario())
