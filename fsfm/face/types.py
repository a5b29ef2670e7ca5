"""Plain data types that flow through the face pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One face found by a detector, in the pixel coordinates of the image it was found in.

    box: (4,) float32 ``[x1, y1, x2, y2]``.
    landmarks: (5, 2) float32 ``[x, y]`` in the order left eye, right eye, nose tip, left mouth
    corner, right mouth corner, where left/right are as seen in the image (smaller x first for a
    frontal face).
    score: detector confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])
