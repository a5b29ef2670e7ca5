"""Box helpers shared by the face detectors (numpy only).

Boxes are float arrays of shape (N, 4) ``[x1, y1, x2, y2]`` in continuous pixel coordinates:
pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, so a box's width is ``x2 - x1`` (no +1).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

OverlapMode = Literal["union", "min"]


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas; inverted boxes count as empty."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def pairwise_overlaps(a: np.ndarray, b: np.ndarray, mode: OverlapMode = "union") -> np.ndarray:
    """(len(a), len(b)) overlaps of every box in ``a`` with every box in ``b``.

    mode "union" is IoU; "min" divides the intersection by the smaller area, which also
    suppresses a small box lying inside a bigger one (MTCNN's last stage uses it).
    """
    a, b = a[:, None, :4], b[None, :, :4]
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    area_a, area_b = box_areas(a[:, 0])[:, None], box_areas(b[0])[None, :]
    denom = np.minimum(area_a, area_b) if mode == "min" else area_a + area_b - inter
    return inter / np.maximum(denom, np.finfo(np.float32).tiny)


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    mode: OverlapMode = "union",
    block: int = 64,
) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first.

    A box is dropped when its overlap with a kept, higher-scoring box exceeds ``iou_threshold``.
    Overlaps are computed a block of boxes at a time against all lower-scoring boxes, so the
    Python loop only ORs precomputed rows, and memory stays at ``block * len(boxes)``.
    """
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    suppressed = np.zeros(len(boxes), dtype=bool)
    for start in range(0, len(boxes), block):
        over = pairwise_overlaps(boxes[start : start + block], boxes[start:], mode) > iou_threshold
        for row, i in enumerate(range(start, min(start + block, len(boxes)))):
            if not suppressed[i]:
                suppressed[i + 1 :] |= over[row, row + 1 :]
    return order[~suppressed]


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares of side max(width, height) around the same centre."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centres_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centres_y = (boxes[:, 1] + boxes[:, 3]) / 2
    half = sides / 2
    return np.stack([centres_x - half, centres_y - half, centres_x + half, centres_y + half], axis=1)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the image ``[0, width] x [0, height]``."""
    limits = np.array([width, height, width, height], dtype=boxes.dtype)
    return np.clip(boxes, 0, limits)
