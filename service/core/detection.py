"""Detection sized to the load: every core for a request that has the machine to itself, one core when
others are in flight.

The default detector runs its nets on every core (``DetectorConfig.threads`` None): a lone 1280x720
frame is detected in 10-13 ms on 2 cores instead of 14-16 on one. Under load the same intra-op
threads only contend with the engine and with the other requests' detections (which already run side
by side on the preprocessing threads): at saturation on 2 cores the service answered 7% fewer frames/s
(6.7 against 7.2 group frames/s, ``fsfm bench serve --group-frame``). So the core keeps a one-thread
copy of the detector and uses it whenever another request is in flight (``AnalysisCore.start``).
Both copies run the same nets on the same inputs: the faces found do not depend on the load.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fsfm.face.detector import FaceDetector
from fsfm.face.types import DetectedFace


class LoadAwareDetector:
    """Implements ``FaceDetector``: ``lone`` when ``is_lone()`` says this request is the only one in
    flight (or there is no ``shared`` copy), ``shared`` otherwise. ``is_lone`` is called on the
    preprocessing thread, so it must only read."""

    def __init__(self, lone: FaceDetector, shared: FaceDetector | None, is_lone: Callable[[], bool]) -> None:
        self.lone = lone
        self.shared = shared
        self.is_lone = is_lone

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        detector = self.lone if self.shared is None or self.is_lone() else self.shared
        return detector.detect(image)
