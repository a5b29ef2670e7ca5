"""RetinaFace (ResNet-50) face detector on ONNX Runtime: boxes plus 5 landmarks, no PyTorch.

The ONNX file comes from ``fsfm.face.retinaface_convert.convert_retinaface``; it takes RGB pixels
in [0, 255] (the weights' own normalisation is inside the graph) of any size, and returns per
prior box offsets ``loc`` (N, P, 4), class probabilities ``conf`` (N, P, 2: background, face) and
landmark offsets ``landms`` (N, P, 10). Priors are the anchors of the original
Pytorch_Retinaface config, in the order the heads emit them: level by level (strides 8, 16, 32),
row-major cells, two sizes per cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from fsfm.engines.onnxruntime import OnnxRuntimeEngine, available_providers
from fsfm.face.bounded import downscale
from fsfm.face.boxes import nms
from fsfm.face.types import DetectedFace

STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
NMS_THRESHOLD = 0.4
# Candidates kept for NMS, best first (the original's top_k): bounds NMS time at low thresholds.
PRE_NMS_TOP_K = 5000
# Not TensorRT by default: every new image size would rebuild its engine.
_DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@lru_cache(maxsize=32)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """(P, 4) read-only priors ``[cx, cy, w, h]`` in pixels of a height x width network input.

    The feature map of stride s has ceil(size / s) cells per side, as ResNet-50 computes it.
    """
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=False):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx, size = np.meshgrid(
            (np.arange(rows) + 0.5) * step, (np.arange(cols) + 0.5) * step, np.asarray(sizes), indexing="ij"
        )
        levels.append(np.stack([cx, cy, size, size], axis=-1).reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32)
    priors.flags.writeable = False
    return priors


def decode(loc: np.ndarray, landms: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw head outputs of P priors -> (P, 4) boxes ``[x1, y1, x2, y2]`` and (P, 5, 2) landmarks.

    Offsets are scaled by the variances of training: centres move by ``loc * 0.1 * prior size``,
    sizes are ``prior size * exp(loc * 0.2)``; landmarks move like centres.
    """
    centres, sizes = priors[:, :2], priors[:, 2:]
    box_centres = centres + loc[:, :2] * CENTRE_VARIANCE * sizes
    half_sizes = sizes * np.exp(loc[:, 2:] * SIZE_VARIANCE) / 2
    boxes = np.concatenate([box_centres - half_sizes, box_centres + half_sizes], axis=1)
    landmarks = centres[:, None, :] + landms.reshape(-1, 5, 2) * CENTRE_VARIANCE * sizes[:, None, :]
    return boxes, landmarks


class RetinaFaceDetector:
    """RetinaFace-ResNet50 over one ONNX Runtime session; implements ``FaceDetector``.

    onnx_path: the converted model.
    min_face_size: faces whose box has a side shorter than this (original pixels) are dropped.
        The smallest prior is 16 pixels at the network input, so images shrunk to ``max_side``
        lose faces below about 16 / scale pixels whatever this says.
    score_threshold: face probability a detection needs.
    threads: ONNX Runtime intra-op threads (None: all cores).
    max_side: longer image side fed to the network; larger images are shrunk to it (time and
        memory grow with the pixel count), smaller ones are not enlarged.
    providers: ONNX Runtime providers; default CUDA when installed, else CPU.
    """

    def __init__(
        self,
        onnx_path: Path,
        min_face_size: int = 20,
        score_threshold: float = 0.9,
        threads: int | None = None,
        max_side: int = 1280,
        providers: Sequence[str] | None = None,
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        if max_side < STEPS[-1]:
            raise ValueError(f"max_side must be at least {STEPS[-1]}, got {max_side}")
        if providers is None:
            installed = set(available_providers())
            providers = [p for p in _DEFAULT_PROVIDERS if p in installed]
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold
        self.max_side = max_side
        self._engine = OnnxRuntimeEngine(onnx_path, providers=providers, threads=threads, memory_arena=False)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB uint8 (H, W, 3) image, highest score first; boxes may extend past the edges."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        resized, scale = downscale(image, self.max_side)
        out = self._engine.run(resized.astype(np.float32).transpose(2, 0, 1)[None])
        priors = prior_boxes(*resized.shape[:2])
        scores = out["conf"][0, :, 1]
        if scores.shape[0] != priors.shape[0]:
            raise ValueError(f"model gives {scores.shape[0]} priors, RetinaFace-ResNet50 has {priors.shape[0]}")
        candidates = np.flatnonzero(scores >= self.score_threshold)
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")][:PRE_NMS_TOP_K]
        boxes, landmarks = decode(out["loc"][0, candidates], out["landms"][0, candidates], priors[candidates])
        boxes, landmarks, scores = boxes / np.tile(scale, 2), landmarks / scale, scores[candidates]
        large = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face_size
        boxes, landmarks, scores = boxes[large], landmarks[large], scores[large]
        boxes, landmarks = boxes.astype(np.float32), landmarks.astype(np.float32)
        return [
            DetectedFace(box=boxes[i], landmarks=landmarks[i], score=float(scores[i]))
            for i in nms(boxes, scores, NMS_THRESHOLD)
        ]
