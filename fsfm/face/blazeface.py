"""BlazeFace proposals refined by MTCNN's O-Net: a fast face detector with the 5 landmarks we need.

BlazeFace (Bazarevsky et al. 2019, arXiv 1907.05047) is MediaPipe's single-shot face detector; we
run its 256-pixel "back camera" model, converted to ONNX (``fsfm.face.blazeface_convert``). It finds
faces from about ``SMALLEST_FACE`` to ``LARGEST_FACE`` pixels of its input in one pass, about 7 ms
for a 256x256 input on one core here, but its 6 keypoints are not ours (no mouth corners) and its boxes
follow the anchor grid of the scale it ran at. So each proposal goes through MTCNN's O-Net twice
(``fsfm.face.mtcnn.OutputNet``): once on a square around the proposal, once on the square around
O-Net's own box. O-Net gives the box, the score and the 5 landmarks, so they follow the face more
than the proposal: a face's box barely depends on ``min_face_size``, which only picks the scale
BlazeFace runs at (IoU 0.94 at worst between 20 and 40 on the test photos; one O-Net pass: 0.84),
and boxes and landmarks are MTCNN's kind, the kind models were prepared with until now. Crops
reaching past the image are padded with black for O-Net, so a face cut by the border keeps its shape.

Scales: the image is shrunk so that a face of ``min_face_size`` pixels is ``SMALLEST_FACE`` pixels
for BlazeFace (never enlarged), and padded (black, right and bottom) to a multiple of ``GRID``;
the converted graph takes any such size. The scale then grows to fill that padded input as far as
the aspect ratio allows (the pixels cost nothing more, and smaller faces become findable), or, if a
power of two lies in that range, to it: halving is the cheap resize (see ``shrink``). A 1280x720
frame is searched at exactly 1/4 (320x180 in a 320x192 input), not at the 0.24 that min_face_size
asks for. When faces as large as the image's shorter side would then exceed ``LARGEST_FACE``, a
second, coarser pass looks for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.boxes import nms, square_boxes
from fsfm.face.detector import DETECT_MAX_SIDE
from fsfm.face.mtcnn import OutputNet
from fsfm.face.types import DetectedFace

WEIGHTS_FILE = "face_detection_back.onnx"
MODEL_SIZE = 256  # the side of the square input the model was trained on
# Anchors of the 256-pixel model: (stride, anchors per cell) of its two output maps, in output order.
ANCHOR_LAYERS = ((16, 2), (32, 6))
# Input sides must be multiples of the coarsest stride.
GRID = 32
# Face sizes (box side, pixels of BlazeFace's input) it finds reliably, measured on the astronaut
# photo: found from 10 pixels (score 0.77) and 240; 12 keeps a margin at the small end.
SMALLEST_FACE = 12
LARGEST_FACE = 240
# What O-Net looks at: BlazeFace's boxes scoring at least this (MediaPipe reports from 0.5; small faces
# score less: at 0.5 one of the group photo's six faces, at 19 pixels, is missed), after NMS at
# MediaPipe's IoU. O-Net then drops the few non-faces this lets through.
PROPOSAL_THRESHOLD = 0.3
PROPOSAL_NMS = 0.3
# The square O-Net first sees around a proposal: BlazeFace's box is a tight square on the eyes,
# nose and mouth, MTCNN's box reaches from the forehead to the chin. Measured on the six faces of
# the group photo: MTCNN's box is about 1.25 times as tall, and centred 0.08 of the side higher.
ONET_SIDE = 1.25
ONET_LIFT = 0.08
RAW_SCORE_LIMIT = 80.0  # logits are clipped before the sigmoid (float32 exp overflows past 88)


@lru_cache(maxsize=16)
def _anchors(height: int, width: int) -> np.ndarray:
    """(N, 2) anchor centres in input pixels, in the order of the model's outputs for that size
    (cached: a video's frames, or a service's usual sizes, give few input sizes)."""
    layers = []
    for stride, per_cell in ANCHOR_LAYERS:
        ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
        centres = (np.stack([xs, ys], axis=-1).reshape(-1, 1, 2) + 0.5) * stride
        layers.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(layers).astype(np.float32)


def _fill_grid(scale: float, height: int, width: int) -> float:
    """The scale, at least ``scale`` and at most 1, whose resized image fills the ``GRID``-padded input
    that ``scale`` gives as far as the aspect ratio allows; a power of two instead where one lies
    between the two (``shrink`` halves fast)."""
    padded_h, padded_w = (-(-round(side * scale) // GRID) * GRID for side in (height, width))
    filled = min(1.0, padded_w / width, padded_h / height)
    halving = 2.0 ** np.floor(np.log2(filled))
    return float(halving) if halving >= scale else filled


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` area-resized to ``size`` (width, height), halving first while that stays above it.

    OpenCV's ``INTER_AREA`` is fast for a factor of exactly 2 and slow otherwise (2.2 ms to take a
    1280x720 frame to 384x216, 0.2 ms to halve it), so the slow step is left a smaller image.
    """
    while image.shape[1] >= 2 * size[0] and image.shape[0] >= 2 * size[1]:
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class BlazeFaceDetector:
    """BlazeFace proposals, O-Net boxes, scores and landmarks; implements ``FaceDetector``.

    weights: BlazeFace's ONNX file. onet: MTCNN's ``onet.onnx``.
    min_face_size: smallest face side searched for, in pixels; sets the scale BlazeFace runs at,
        and faces O-Net boxes smaller than it are not reported.
    score_threshold: O-Net score a face needs (values below ``ONET_THRESHOLD`` act as it).
    threads: ONNX Runtime intra-op threads per net (None: all cores).
    max_side: BlazeFace searches a larger image as it would a copy of this longest side (the scales
        shrink with it, and ``min_face_size`` counts the copy's pixels), while O-Net crops the image
        itself: no copy is made.
    """

    def __init__(
        self,
        weights: Path,
        onet: Path,
        min_face_size: int = 40,
        score_threshold: float = 0.9,
        threads: int | None = None,
        providers: Sequence[str] | None = ("CPUExecutionProvider",),
        max_side: int = DETECT_MAX_SIDE,
    ) -> None:
        for path in (weights, onet):
            if not Path(path).is_file():
                raise FileNotFoundError(f"face detector weights {path} not found")
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold
        self.max_side = max_side
        # Every scale gives a new input shape: no arena, which would only grow.
        self._net = OnnxRuntimeEngine(Path(weights), providers=providers, threads=threads, memory_arena=False)
        self._onet = OutputNet(Path(onet), threads, providers, pad=True)

    def scales(self, height: int, width: int) -> list[float]:
        """The scales BlazeFace runs at, in image pixels: one where ``min_face_size`` is
        ``SMALLEST_FACE`` pixels, but never below the model's own ``MODEL_SIZE`` nor above 1 (filled,
        ``_fill_grid``); and when a face as large as the shorter side would be too large there, a
        coarser one where it is ``LARGEST_FACE``, which is the only pass when it still finds faces of
        ``min_face_size`` (a small image, such as a face photo of a few hundred pixels, is searched
        once). As if on a copy of at most ``max_side`` pixels (``fsfm.face.bounded``), without making it."""
        bound = min(1.0, self.max_side / max(height, width))
        longest = max(height, width) * bound
        smallest_face = SMALLEST_FACE / self.min_face_size * bound  # the coarsest scale that finds min_face_size
        fine = _fill_grid(
            min(1.0, max(SMALLEST_FACE / self.min_face_size, MODEL_SIZE / longest)) * bound, height, width
        )
        coarse = LARGEST_FACE / min(height, width)
        if fine <= coarse:
            return [fine]
        return [coarse] if coarse >= smallest_face else [fine, coarse]

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB uint8 (H, W, 3) image, highest score first; boxes may extend past the edges."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        proposals = self.propose(image)
        boxes, scores, landmarks = self._onet(image, self._onet_squares(proposals))
        boxes, scores, landmarks = self._onet(image, square_boxes(boxes))
        # min_face_size counts pixels of the bounded copy, as for the other detectors.
        smallest = self.min_face_size * max(1.0, max(image.shape[:2]) / self.max_side)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return [
            DetectedFace(box=box.astype(np.float32), landmarks=points.astype(np.float32), score=float(score))
            for box, score, points, side in zip(boxes, scores, landmarks, sides, strict=True)
            if score >= self.score_threshold and side >= smallest
        ]

    def propose(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) BlazeFace boxes in image pixels, over all scales, after NMS."""
        height, width = image.shape[:2]
        found = [self._run(image, scale) for scale in self.scales(height, width)]
        boxes = np.concatenate([boxes for boxes, _ in found])
        scores = np.concatenate([scores for _, scores in found])
        return boxes[nms(boxes, scores, PROPOSAL_NMS)]

    def _run(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """BlazeFace's boxes and scores above ``PROPOSAL_THRESHOLD`` at one scale, in image pixels."""
        height, width = image.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = shrink(image, size)
        padded_h, padded_w = (-(-side // GRID) * GRID for side in (size[1], size[0]))
        tensor = np.full((1, 3, padded_h, padded_w), -1.0, dtype=np.float32)
        tensor[0, :, : size[1], : size[0]] = small.transpose(2, 0, 1) * np.float32(1 / 127.5) - 1
        out = self._net.run(tensor)
        logits = np.clip(out["logits"][0, :, 0], -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
        scores = 1 / (1 + np.exp(-logits))
        keep = scores >= PROPOSAL_THRESHOLD
        regressors = out["regressors"][0, keep]
        centres = _anchors(padded_h, padded_w)[keep] + regressors[:, 0:2]
        half = regressors[:, 2:4] / 2
        boxes = np.concatenate([centres - half, centres + half], axis=1)
        # Undo the resize edge by edge: x / (resized width / width), likewise y.
        factors = np.tile([size[0] / width, size[1] / height], 2)
        return boxes / factors, scores[keep]

    @staticmethod
    def _onet_squares(boxes: np.ndarray) -> np.ndarray:
        """The square O-Net first sees around each BlazeFace box (``ONET_SIDE``, ``ONET_LIFT``)."""
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * ONET_SIDE
        centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
        centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 - ONET_LIFT * sides
        half = sides / 2
        return np.stack([centre_x - half, centre_y - half, centre_x + half, centre_y + half], axis=1)
