"""The detector interface and its factory: the service and training choose a detector by config.

``fsfm serve``, ``fsfm analyze`` and ``fsfm prepare`` take their defaults from the ``DEFAULT_*``
constants here, so that a model is served the crops it was trained on unless someone asks otherwise.

Every detector ``create_detector`` makes searches a copy of at most ``DetectorConfig.max_side``
pixels per side (``fsfm.face.bounded``; BlazeFace and RetinaFace search as they would that copy,
without making it) and answers in the full image's pixels, so ``fsfm serve``, ``fsfm analyze`` and
``fsfm prepare`` find the same faces at the same cost."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from fsfm.face.types import DetectedFace

# The longest side detection sees by default. MTCNN takes about 0.3 s of one core and 80 MB there at
# min_face_size 20 (0.45 s and 130 MB at 1280; both grow with the square). At the default
# min_face_size, a 1920x1080 frame is searched for faces from 75 pixels.
DETECT_MAX_SIDE = 1024

DetectorKind = Literal["blazeface", "mtcnn", "retinaface"]
# BlazeFace proposals refined by MTCNN's O-Net (fsfm.face.blazeface): MTCNN's kind of boxes and
# landmarks at a fraction of its cost (the six faces of a 1280x720 frame in 13 ms of one core, where
# MTCNN takes 60 ms at min_face_size 40 and 175 ms at 20, measured together; 10.6 ms on two cores).
DEFAULT_DETECTOR: DetectorKind = "blazeface"
# Faces from 40 pixels are searched (in the max_side copy): the models judge faces from 32
# (CropSpec.min_face_size), and at 40 BlazeFace searches a 1024-pixel image in one 320x192 pass. 32
# costs a third more (about 17 ms of a 1280x720 frame against 13), 20 four times as much (52 ms).
DEFAULT_MIN_FACE_SIZE = 40
DEFAULT_SCORE_THRESHOLD = 0.9


class FaceDetector(Protocol):
    """Finds faces with 5 landmarks in an RGB uint8 image of shape (H, W, 3)."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces found, highest score first. An image without faces gives an empty list."""
        ...


class DetectorConfig(BaseModel):
    """Which detector to run and how. ``weights`` is a folder (MTCNN) or file (BlazeFace, RetinaFace)
    of ONNX."""

    kind: DetectorKind = DEFAULT_DETECTOR
    weights: Path | None = Field(
        default=None, description="ONNX weights; default: the ones the package ships (BlazeFace, MTCNN)"
    )
    min_face_size: int = Field(
        default=DEFAULT_MIN_FACE_SIZE, ge=8, description="smallest face side (pixels) searched for"
    )
    score_threshold: float = Field(
        default=DEFAULT_SCORE_THRESHOLD, ge=0.0, le=1.0, description="final detection threshold"
    )
    threads: int | None = Field(
        default=None,
        description="ONNX Runtime intra-op threads per net (None: every core, so that one frame's detection takes "
        "the machine when it is idle; 1 where processes detect side by side, as fsfm prepare's do)",
    )
    max_side: int = Field(
        default=DETECT_MAX_SIDE,
        ge=32,
        description="longest side of the copy detection runs on; larger images are shrunk for detection only",
    )


def create_detector(config: DetectorConfig | None = None) -> FaceDetector:
    """Build the configured detector from local ONNX files. Never downloads: BlazeFace's and MTCNN's
    converted weights ship in the package; RetinaFace needs ``weights`` pointing at a converted file."""
    config = config or DetectorConfig()
    if config.kind == "blazeface":
        from fsfm.assets import blazeface_file, mtcnn_dir
        from fsfm.face.blazeface import BlazeFaceDetector

        # BlazeFace bounds its own scales by max_side (no shrunk copy: 2 ms of a 1280x720 frame).
        return BlazeFaceDetector(
            config.weights or blazeface_file(),
            mtcnn_dir() / "onet.onnx",
            config.min_face_size,
            config.score_threshold,
            config.threads,
            max_side=config.max_side,
        )
    if config.kind == "mtcnn":
        from fsfm.assets import mtcnn_dir
        from fsfm.face.bounded import BoundedDetector
        from fsfm.face.mtcnn import MtcnnDetector

        folder = config.weights or mtcnn_dir()
        if not all((folder / f"{net}.onnx").is_file() for net in ("pnet", "rnet", "onet")):
            raise FileNotFoundError(f"MTCNN ONNX weights not found in {folder}: run `fsfm setup` first")
        return BoundedDetector(
            MtcnnDetector(folder, config.min_face_size, config.score_threshold, config.threads), config.max_side
        )
    from fsfm.face.retinaface import RetinaFaceDetector

    if config.weights is None or not config.weights.is_file():
        raise FileNotFoundError(
            "RetinaFace needs detector weights: convert yours with `fsfm setup --retinaface FILE` and set the ONNX path"
        )
    # RetinaFace shrinks its input itself, and keeps min_face_size in full-image pixels.
    return RetinaFaceDetector(
        config.weights, config.min_face_size, config.score_threshold, config.threads, max_side=config.max_side
    )
