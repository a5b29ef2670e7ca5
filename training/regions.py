"""Facial-region maps for CRFR-P masking: the LaPa label set of the official face parser (upstream
``datasets/pretrain/preprocess/face_parse.py`` in github.com/wolo-wolo/FSFM-CVPR25; docs/pretraining.md),
drawn geometrically from the detector's 5 landmarks (offline default), or read from precomputed
face-parsing maps in the official layout (``parsing_maps/<name>.npy``).

A region map is a uint8 array (H, W) of LaPa labels over a face crop. Masking only needs to know
which 16x16 patches touch which group of labels (``training.masking``), so the landmark maps do not
have to be pixel-exact; they have to put eyes, brows, nose, mouth, skin, hair and background where
they are, with the right relative sizes.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


class LaPa(IntEnum):
    """The 11 classes of FACER's ``farl/lapa/448`` parser. Right/left are the subject's: the eye on
    the image's left is the subject's right eye (immaterial for masking, which merges the pairs)."""

    BACKGROUND = 0
    SKIN = 1
    RIGHT_BROW = 2
    LEFT_BROW = 3
    RIGHT_EYE = 4
    LEFT_EYE = 5
    NOSE = 6
    UPPER_LIP = 7
    INNER_MOUTH = 8
    LOWER_LIP = 9
    HAIR = 10


NUM_LABELS = len(LaPa)


class RegionSource(Protocol):
    """Gives the region map of one face crop: ``name`` is the face's file stem, ``crop`` its RGB
    uint8 (S, S, 3) pixels, ``landmarks`` its 5 points in crop pixels (None when unknown)."""

    def __call__(self, name: str, crop: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray: ...


class _FaceFrame:
    """Face coordinates in units of the inter-ocular distance d: origin at the midpoint of the eyes,
    u along the eye line (towards the image-right eye), v perpendicular to it, down the face."""

    def __init__(self, landmarks: np.ndarray) -> None:
        left_eye, right_eye = landmarks[0], landmarks[1]
        axis = right_eye - left_eye
        self.d = float(np.hypot(*axis))
        if self.d < 1e-6:
            raise ValueError("degenerate landmarks: both eyes at the same point")
        e_u = axis / self.d
        self.basis = np.stack([e_u, [-e_u[1], e_u[0]]])  # rows e_u, e_v (+90 degrees, y pointing down)
        self.origin = (left_eye + right_eye) / 2

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixel coordinates -> (..., 2) face coordinates (u, v)."""
        return (points - self.origin) @ self.basis.T / self.d


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def landmark_region_map(landmarks: np.ndarray, size: int) -> np.ndarray:
    """A LaPa-labelled (size, size) uint8 map drawn from 5 landmarks given in crop pixels
    (left eye, right eye, nose tip, left and right mouth corner, image left/right).

    Geometry in units of the inter-ocular distance d (anthropometric averages of frontal faces):
    face skin is an ellipse from ~1 d above the eyes to ~0.85 d below the mouth and ~1 d to each side;
    hair is the cap of a larger ellipse above the nose line; brows sit ~0.34 d above the eyes; the nose
    runs from the bridge to just below the tip; the lips are split at the line between the mouth
    corners, with a thin inner-mouth band on it. Later labels paint over earlier ones.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    frame = _FaceFrame(landmarks)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    u, v = np.moveaxis(frame(np.stack([xs, ys], axis=-1)), -1, 0)
    right_eye, left_eye, nose, mouth_l, mouth_r = frame(landmarks)
    mouth = (mouth_l + mouth_r) / 2
    mouth_w = max(float(np.hypot(*(mouth_r - mouth_l))), 0.3)  # in d units; guards collapsed corners

    top, chin = -1.05, mouth[1] + 0.85
    centre_u, centre_v = 0.35 * nose[0], (top + chin) / 2  # a turned head shifts the face towards the nose
    labels = np.full((size, size), LaPa.BACKGROUND, dtype=np.uint8)

    hair_top = top - 0.65
    hair = _ellipse(u, v, centre_u, (hair_top + chin) / 2, 1.35, (chin - hair_top) / 2) & (v < nose[1])
    labels[hair] = LaPa.HAIR
    labels[_ellipse(u, v, centre_u, centre_v, 1.0, (chin - top) / 2)] = LaPa.SKIN

    for (eu, ev), brow, eye in (
        (right_eye, LaPa.RIGHT_BROW, LaPa.RIGHT_EYE),
        (left_eye, LaPa.LEFT_BROW, LaPa.LEFT_EYE),
    ):
        labels[_ellipse(u, v, eu, ev - 0.34, 0.32, 0.09)] = brow
        labels[_ellipse(u, v, eu, ev, 0.21, 0.09)] = eye

    bridge_v, tip_v = 0.12, nose[1] + 0.12
    labels[_ellipse(u, v, nose[0] / 2, (bridge_v + tip_v) / 2, 0.2, (tip_v - bridge_v) / 2)] = LaPa.NOSE

    half_w, split = 0.55 * mouth_w, 0.04 * mouth_w
    lips = _ellipse(u, v, mouth[0], mouth[1], half_w, 0.28 * mouth_w)
    labels[lips & (v < mouth[1] - split) & (v > mouth[1] - 0.16 * mouth_w)] = LaPa.UPPER_LIP
    labels[lips & (v > mouth[1] + split)] = LaPa.LOWER_LIP
    labels[lips & (np.abs(v - mouth[1]) <= split)] = LaPa.INNER_MOUTH
    return labels


def landmark_regions(name: str, crop: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
    """``RegionSource`` of the offline default: regions drawn from the detector's landmarks."""
    if landmarks is None:
        raise ValueError(f"{name}: landmark region maps need the face's landmarks")
    return landmark_region_map(landmarks, crop.shape[0])


def read_parsing_map(path: str | Path, size: int | None = None) -> np.ndarray:
    """An official ``parsing_maps/<name>.npy`` (int8, (1, 224, 224), LaPa labels) -> uint8 (H, W),
    resized with nearest-neighbour to (size, size) when given and different."""
    array = np.load(Path(path), allow_pickle=False)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[0] != array.shape[1] or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: expected an integer (1, S, S) parsing map, got {array.dtype} {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= NUM_LABELS):
        raise ValueError(f"{path}: labels outside the LaPa range 0..{NUM_LABELS - 1}")
    labels = array.astype(np.uint8)
    if size is not None and labels.shape[0] != size:
        labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
    return labels


def write_parsing_map(path: str | Path, labels: np.ndarray) -> None:
    """uint8 (H, W) labels -> the official int8 (1, H, W) ``.npy``."""
    np.save(Path(path), labels.astype(np.int8)[None])


class ParsingMapRegions:
    """``RegionSource`` reading precomputed face-parsing maps ``<folder>/<name>.npy`` (a real face
    parser's output, e.g. FACER ``farl/lapa/448`` as in the paper)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __call__(self, name: str, crop: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"no parsing map {path}")
        return read_parsing_map(path, crop.shape[0])
