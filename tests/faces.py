"""Hand-measured face locations in the test photographs, and the checks that use them."""

from __future__ import annotations

import numpy as np

# skimage.data.astronaut() (512x512), measured by eye on 4x-10x enlargements with a pixel grid.
# Face: cheek edge to cheek edge, forehead under the fringe to the bottom of the chin.
ASTRONAUT_FACE_BOX = np.array([183.0, 75.0, 271.0, 180.0])
ASTRONAUT_LANDMARKS = np.array(
    [
        [203.0, 101.0],  # left eye (image left), iris centre
        [247.0, 103.0],  # right eye, iris centre
        [223.5, 127.0],  # nose tip (highlight)
        [203.5, 140.5],  # left mouth corner
        [244.0, 141.0],  # right mouth corner
    ]
)
LANDMARK_TOLERANCE = 0.1  # of the face box width

# The group photo of ``fsfm.assets.ensure_sample_photos`` (1280x886): the nose of each of the six
# faces, left to right, measured by eye on the picture.
GROUP_FACE_CENTRES = np.array([[110, 330], [320, 205], [520, 345], [795, 410], [960, 135], [1180, 335]], float)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return float(inter / (area(a) + area(b) - inter))


def assert_face_at(box, landmarks, expected_box: np.ndarray, expected_landmarks: np.ndarray) -> None:
    """Box IoU >= 0.5 and every landmark within 10% of the face width of the measured point."""
    box, landmarks = np.asarray(box, float), np.asarray(landmarks, float)
    assert iou(box, expected_box) >= 0.5, (box, expected_box)
    errors = np.linalg.norm(landmarks - expected_landmarks, axis=1)
    assert np.all(errors <= LANDMARK_TOLERANCE * (expected_box[2] - expected_box[0])), errors


def assert_group_faces(boxes) -> None:
    """Exactly six faces, each measured face centre inside exactly one detected box."""
    boxes = np.asarray(boxes, float)
    assert len(boxes) == 6, boxes
    for centre in GROUP_FACE_CENTRES:
        inside = (
            (boxes[:, 0] <= centre[0])
            & (centre[0] <= boxes[:, 2])
            & (boxes[:, 1] <= centre[1])
            & (centre[1] <= boxes[:, 3])
        )
        assert inside.sum() == 1, (centre, boxes)
