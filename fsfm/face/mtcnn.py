"""MTCNN face detector (Zhang et al. 2016) on ONNX Runtime: boxes plus 5 landmarks, no PyTorch.

The three nets come from ``fsfm.assets.ensure_mtcnn`` (facenet-pytorch 2.6.0 weights converted
to ONNX). The cascade follows the original:

1. P-Net slides over an image pyramid and proposes boxes (NMS per scale, then across scales).
2. R-Net re-scores and regresses square 24x24 crops of the proposals.
3. O-Net re-scores and regresses 48x48 crops and places the landmarks (``OutputNet``, which
   ``fsfm.face.blazeface`` also runs on its own).

Coordinates: the original works in 1-based inclusive pixel indices (MATLAB heritage). Here every
box is in continuous 0-based pixel edges (see ``fsfm.face.boxes``), which is the same geometry:
a 1-based box ``[a, b]`` is the continuous box ``[a - 1, b]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.boxes import clip_boxes, nms, square_boxes
from fsfm.face.types import DetectedFace

PYRAMID_FACTOR = 0.709
PNET_STRIDE = 2
PNET_CELL = 12
RNET_SIZE = 24
ONET_SIZE = 48
# Stage thresholds of the cascade: they prune candidates, the caller's score_threshold decides
# what is reported.
PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
ONET_THRESHOLD = 0.7
PNET_SCALE_NMS = 0.5
PNET_NMS = 0.7
RNET_NMS = 0.7
ONET_NMS = 0.7
WEIGHT_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
# Crops per R-Net / O-Net run: bounds their activations (about 0.2 MB per R-Net crop) whatever the number
# of candidates an image gives; the nets score each crop on its own, so results do not depend on it.
NET_BATCH = 128


def _normalise(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW in [-1, 1), the input the nets were trained on."""
    return ((images.astype(np.float32) - 127.5) * 0.0078125).transpose(0, 3, 1, 2)


def _run_in_batches(net: OnnxRuntimeEngine, crops: np.ndarray) -> dict[str, np.ndarray]:
    """``net`` over uint8 crops (N, S, S, 3) in runs of at most ``NET_BATCH``, outputs concatenated."""
    runs = [net.run(_normalise(crops[start : start + NET_BATCH])) for start in range(0, max(len(crops), 1), NET_BATCH)]
    return {name: np.concatenate([run[name] for run in runs]) for name in runs[0]}


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Moves each edge by its offset times the box width (x edges) or height (y edges)."""
    sizes = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + offsets * sizes


class MtcnnDetector:
    """The MTCNN cascade over three ONNX Runtime sessions; implements ``FaceDetector``.

    weights_dir: folder with ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx``.
    min_face_size: smallest face side searched for, in pixels; larger is faster (fewer scales).
    score_threshold: O-Net score a face needs to be reported. O-Net already drops candidates
        under ``ONET_THRESHOLD``, so values below it act as ``ONET_THRESHOLD``.
    threads: ONNX Runtime intra-op threads per session (None: all cores).
    providers: ONNX Runtime providers. CPU by default: the nets are tiny, and P-Net sees a new
        input shape at every pyramid scale, which TensorRT would answer with engine rebuilds.

    Memory follows the image: P-Net's largest level is ``12 / min_face_size`` of it (about 80 MB of
    activations for a 1024-pixel image at the default 20), R-Net and O-Net run ``NET_BATCH`` crops at a
    time, and the sessions keep no arena, so a large image's memory is freed when ``detect`` returns.
    ``fsfm.face.bounded`` keeps the image itself bounded.
    """

    def __init__(
        self,
        weights_dir: Path,
        min_face_size: int = 20,
        score_threshold: float = 0.9,
        threads: int | None = None,
        providers: Sequence[str] | None = ("CPUExecutionProvider",),
    ) -> None:
        weights_dir = Path(weights_dir)
        missing = [name for name in WEIGHT_FILES if not (weights_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"MTCNN weights {missing} not found in {weights_dir}; run `fsfm setup`")
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be positive, got {min_face_size}")
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold
        self._pnet, self._rnet = (_session(weights_dir / name, threads, providers) for name in WEIGHT_FILES[:2])
        self._onet = OutputNet(weights_dir / WEIGHT_FILES[2], threads, providers)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB uint8 (H, W, 3) image, highest score first; boxes may extend past the edges."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        boxes = self._refine(image, self._propose(image))
        boxes, scores, landmarks = self._onet(image, boxes)
        return [
            DetectedFace(box=box.astype(np.float32), landmarks=points.astype(np.float32), score=float(score))
            for box, score, points in zip(boxes, scores, landmarks, strict=False)
            if score >= self.score_threshold
        ]

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: powers of ``PYRAMID_FACTOR``, from the one nearest to where a face of
        ``min_face_size`` covers P-Net's 12-pixel cell.

        The original starts at ``12 / min_face_size`` exactly, so every scale, and with them the boxes,
        moved with the setting: a face's box at min_face_size 20 and 40 overlapped by IoU 0.83 at worst
        on the test photos. On a fixed grid the settings share their scales (0.91 at worst). The nearest
        power starts the search within a factor ``PYRAMID_FACTOR ** 0.5`` (19%) of ``min_face_size``,
        either way, and costs what the original does on average.
        """
        scale = PYRAMID_FACTOR ** round(math.log(PNET_CELL / self.min_face_size, PYRAMID_FACTOR))
        scales = []
        while min(height, width) * scale >= PNET_CELL:
            scales.append(scale)
            scale *= PYRAMID_FACTOR
        return scales

    def pyramid(self, image: np.ndarray) -> Iterator[tuple[float, np.ndarray]]:
        """``(scale, image resized by scale)`` for every pyramid scale, largest first.

        Each level is area-resized from the level two steps up (about twice its size) rather than
        from the full image: INTER_AREA's cost follows the source size, so this cuts the pyramid
        from ~40 to ~13 ms on a 720p frame, while the levels stay within a few grey levels of
        direct resizes.
        """
        height, width = image.shape[:2]
        levels: list[np.ndarray] = []
        for scale in self.scales(height, width):
            source = levels[-2] if len(levels) >= 2 else image
            size = (int(width * scale + 1), int(height * scale + 1))
            levels.append(cv2.resize(source, size, interpolation=cv2.INTER_AREA))
            yield scale, levels[-1]

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: (N, 4) square proposals from P-Net over the pyramid."""
        per_scale = [self._pnet_candidates(level, scale) for scale, level in self.pyramid(image)]
        candidates = np.concatenate(per_scale) if per_scale else np.zeros((0, 9))
        candidates = candidates[nms(candidates[:, :4], candidates[:, 4], PNET_NMS)]
        return square_boxes(_regress(candidates[:, :4], candidates[:, 5:9]))

    def _pnet_candidates(self, level: np.ndarray, scale: float) -> np.ndarray:
        """(N, 9) ``[x1, y1, x2, y2, score, 4 offsets]`` of P-Net cells on one pyramid level, after NMS."""
        out = self._pnet.run(_normalise(level[None]))
        prob, reg = out["face_prob"][0, 0], out["reg"][0]
        ys, xs = np.nonzero(prob >= PNET_THRESHOLD)
        # The original's window is 1-based pixels floor((2x + 1) / s) .. floor((2x + 12) / s);
        # its start minus one is the 0-based left edge.
        x1 = np.floor((PNET_STRIDE * xs + 1) / scale) - 1
        y1 = np.floor((PNET_STRIDE * ys + 1) / scale) - 1
        x2 = np.floor((PNET_STRIDE * xs + PNET_CELL) / scale)
        y2 = np.floor((PNET_STRIDE * ys + PNET_CELL) / scale)
        candidates = np.column_stack([x1, y1, x2, y2, prob[ys, xs], reg[:, ys, xs].T])
        return candidates[nms(candidates[:, :4], candidates[:, 4], PNET_SCALE_NMS)]

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net keeps and regresses proposals; returns (M, 4) squares."""
        boxes, crops = crop_squares(image, boxes, RNET_SIZE)
        out = _run_in_batches(self._rnet, crops)
        scores = out["face_prob"][:, 0]
        passed = scores >= RNET_THRESHOLD
        boxes, scores, offsets = boxes[passed], scores[passed], out["reg"][passed]
        keep = nms(boxes, scores, RNET_NMS)
        return square_boxes(_regress(boxes[keep], offsets[keep]))


def crop_squares(image: np.ndarray, boxes: np.ndarray, side: int, pad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The boxes whose in-image part is not empty, and those parts resized to side x side.

    By default, parts of a box outside the image are cut off, not padded (as facenet-pytorch does),
    so crops at the border are stretched a little. ``pad`` fills them with black instead (as the
    original MTCNN does), so that the net sees the face's true shape.
    """
    height, width = image.shape[:2]
    wanted = np.floor(boxes).astype(np.int64)
    pixels = clip_boxes(wanted, width, height)
    valid = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
    crops = np.empty((int(valid.sum()), side, side, 3), dtype=np.uint8)
    for crop, (x1, y1, x2, y2), (wx1, wy1, wx2, wy2) in zip(crops, pixels[valid], wanted[valid], strict=True):
        part = image[y1:y2, x1:x2]
        if pad and (x1, y1, x2, y2) != (wx1, wy1, wx2, wy2):
            part = cv2.copyMakeBorder(part, y1 - wy1, wy2 - y2, x1 - wx1, wx2 - x2, cv2.BORDER_CONSTANT, value=0)
        crop[...] = cv2.resize(part, (side, side), interpolation=cv2.INTER_AREA)
    return boxes[valid], crops


def _session(path: Path, threads: int | None, providers: Sequence[str] | None) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, providers=providers, threads=threads, memory_arena=False)


class OutputNet:
    """MTCNN's last stage, O-Net, on its own: scores square candidate boxes, regresses them and
    places 5 landmarks. The cascade runs it on R-Net's boxes, ``fsfm.face.blazeface`` on BlazeFace's.

    pad: black outside the image (see ``crop_squares``).
    """

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: Sequence[str] | None = ("CPUExecutionProvider",),
        pad: bool = False,
    ) -> None:
        self._net = _session(Path(path), threads, providers)
        self._pad = pad

    def __call__(self, image: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and (N, 5, 2) landmarks of the candidates scoring at least ``ONET_THRESHOLD``,
        highest score first; a box overlapping a better one by more than ``ONET_NMS`` of the smaller
        is dropped."""
        boxes, crops = crop_squares(image, squares, ONET_SIZE, self._pad)
        out = _run_in_batches(self._net, crops)
        scores = out["face_prob"][:, 0]
        passed = scores >= ONET_THRESHOLD
        boxes, scores, offsets, relative = boxes[passed], scores[passed], out["reg"][passed], out["landmarks"][passed]
        # Landmarks are relative to the box O-Net saw, before its own regression moves it.
        origin, size = boxes[:, None, 0:2], boxes[:, None, 2:4] - boxes[:, None, 0:2]
        landmarks = origin + np.stack([relative[:, :5], relative[:, 5:]], axis=2) * size
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, scores, ONET_NMS, mode="min")
        return boxes[keep], scores[keep], landmarks[keep]
