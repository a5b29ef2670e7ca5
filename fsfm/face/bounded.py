"""Detection on a bounded-resolution copy: an image whose longer side exceeds ``max_side`` is shrunk
(OpenCV's ``INTER_AREA``) for the detector, the faces found are mapped back to the full image, and
the caller crops them from the full image. Detection time and memory follow ``max_side``, not the
upload: a 6000x6000 image is searched at the cost of a 1024x1024 one (``DETECT_MAX_SIDE``).

The price: faces smaller than the detector's ``min_face_size`` in the copy are not found, which in
an image of longer side ``L > max_side`` is ``min_face_size * L / max_side`` full-resolution pixels
(75 pixels in a 1920x1080 frame at the defaults; the models judge faces of 32 pixels and more).

Coordinates are continuous pixel edges (``fsfm.face.boxes``): a point ``x`` in the copy is ``x / s``
in the image, ``s`` the copy's width over the image's (likewise for ``y``).
"""

from __future__ import annotations

import cv2
import numpy as np

from fsfm.face.detector import DETECT_MAX_SIDE, FaceDetector
from fsfm.face.types import DetectedFace


def downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with its longer side at most ``max_side`` (never enlarged; the image itself when it
    fits), and the (x, y) scale applied."""
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return image, np.ones(2)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized, np.array([size[0] / width, size[1] / height])


class BoundedDetector:
    """Runs ``detector`` on a copy of at most ``max_side`` pixels per side; implements ``FaceDetector``
    with boxes and landmarks in the full image's pixels."""

    def __init__(self, detector: FaceDetector, max_side: int = DETECT_MAX_SIDE) -> None:
        if max_side < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        self.detector = detector
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        copy, scale = downscale(image, self.max_side)
        faces = self.detector.detect(copy)
        if copy is image:
            return faces
        box_scale = np.tile(scale, 2)
        return [
            DetectedFace(
                box=(face.box / box_scale).astype(np.float32),
                landmarks=(face.landmarks / scale).astype(np.float32),
                score=face.score,
            )
            for face in faces
        ]
