"""Self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from one real face.

A copy of the face (the *source*) is slightly altered in colour and frequency content and slightly
moved/scaled, then blended back into the face (the *target*) inside a soft face-shaped mask. The
result carries the generic traces of face swapping (a blending boundary, colour and sharpness
mismatch between the inner face and its surroundings) without any identity change, so a detector
trained on (real, self-blend) pairs learns those traces from real faces alone.

Steps, following the SBI paper and its released code:

1. Mask: the convex hull of the face outline (jaw + brows, or jaw + forehead), or a part of it
   (inner face, lower face) for variety. SBI hulls dlib's 68 (or 81) landmarks; our detector gives
   5 (eyes, nose tip, mouth corners), so the outline is **derived geometrically**: a 2-D affine map
   is fitted (least squares) from the 5 points of a mean frontal face to the detected 5 points,
   and carries the mean face's jaw, brow and forehead points onto the image. Roll, scale and the
   horizontal foreshortening of a turned head follow from the fit; the jaw of a strongly turned
   face is only approximated. 68/81-point landmarks, when available, are hulled directly. A face
   region map (a face parser's labels) can replace landmarks.
2. Colour/frequency transform (RGB shift p 0.3, brightness/contrast +-0.1, a mild hue/saturation/value
   jitter, then either a 2x/4x down-and-up-scale or a sharpening) applied to the source or, with
   probability 0.5, to the target (then the real image of the pair carries it too, so the pair
   differs only inside the mask).
3. Source and mask translated (+-3 % x, +-1.5 % y) and scaled (0.95-1.05) together; the mask then
   elastically deformed (alpha 50, sigma 7).
4. Soft mask: blur, keep the fully-inside part (an erosion), blur again with a random sigma, scale to
   1, times a blend ratio from {0.25, 0.5, 0.75, 1, 1, 1}; fake = mask * source + (1 - mask) * target.
   Steps 3-4 run on a 192-256 px copy of the mask, so the deformation scale does not depend on the
   crop size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.augment import brightness_contrast, hsv_jitter, rgb_shift

# A mean frontal face (a standard 68-point dlib template, made left/right symmetric), in units of the
# distance between the eye centres; origin between the eyes, x to the image right, y down.
MEAN_FACE_5 = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.595], [-0.453, 1.09], [0.453, 1.09]])
_JAW_HALF = [
    (1.166, 0.013),
    (1.160, 0.323),
    (1.130, 0.636),
    (1.069, 0.944),
    (0.949, 1.231),
    (0.764, 1.482),
    (0.539, 1.697),
    (0.287, 1.872),
]
_BROW_HALF = [(0.924, -0.218), (0.778, -0.332), (0.583, -0.362), (0.383, -0.329), (0.192, -0.249)]
MEAN_JAW = np.array([(-x, y) for x, y in _JAW_HALF] + [(0.0, 1.922)] + [(x, y) for x, y in reversed(_JAW_HALF)])
MEAN_BROWS = np.array([(-x, y) for x, y in _BROW_HALF] + [(x, y) for x, y in reversed(_BROW_HALF)])
# The forehead up to the hairline, as the extra points of 81-point models reach: an arc from the brow
# ends to ~1 eye distance above the eyes.
_ARC = np.linspace(0.0, np.pi, 9)
MEAN_FOREHEAD = np.stack([-0.95 * np.cos(_ARC), -0.25 - 0.75 * np.sin(_ARC)], axis=1)

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
_WORK_SIZE = (192, 257)  # the mask is deformed and blurred at a random side in [192, 256]


@dataclass(frozen=True)
class SelfBlend:
    real: np.ndarray  # uint8 (H, W, 3): the target (possibly colour-transformed); the pair's real image
    fake: np.ndarray  # uint8 (H, W, 3): the self-blended image
    mask: np.ndarray  # float32 (H, W) in [0, 1]: the blending weight of the source


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map taking ``src`` points (N, 2) onto ``dst`` (N, 2), N >= 3."""
    design = np.hstack([src, np.ones((len(src), 1))])
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)  # (3, 2)
    return solution.T


def face_outline(landmarks: np.ndarray, forehead: bool = True) -> np.ndarray:
    """Outline points (N, 2) of the face whose landmarks are given (5 points: derived from the mean
    face; 68 or more: the points themselves, which include jaw and brows)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if len(landmarks) >= 68:
        return landmarks
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected 5 or >= 68 landmarks, got shape {landmarks.shape}")
    affine = fit_affine(MEAN_FACE_5, landmarks)
    mean = np.vstack([MEAN_JAW, MEAN_FOREHEAD if forehead else MEAN_BROWS])
    return mean @ affine[:, :2].T + affine[:, 2]


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A float32 {0, 1} mask of a randomly chosen face hull. From 5 landmarks: whole face with
    forehead (p 0.5), whole face up to the brows (0.25), inner face (0.125: brows to chin, between
    the cheeks) or lower face (0.125: from the eyes down); 68+ landmarks: their hull."""
    kind = rng.choice(["forehead", "brows", "inner", "lower"], p=[0.5, 0.25, 0.125, 0.125])
    points = face_outline(landmarks, forehead=kind == "forehead")
    if kind in ("inner", "lower") and len(landmarks) == 5:
        jaw = points[: len(MEAN_JAW)]
        brows = face_outline(landmarks, forehead=False)[len(MEAN_JAW) :]
        points = np.vstack([jaw[3:-3], brows]) if kind == "inner" else np.vstack([jaw, np.asarray(landmarks)[:2]])
    mask = np.zeros(shape, dtype=np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 1.0)
    return mask


def face_region_mask(regions: np.ndarray) -> np.ndarray:
    """A LaPa region map (skin, brows, eyes, nose, lips: labels 1-9) -> float32 {0, 1} face mask."""
    return ((regions >= 1) & (regions <= 9)).astype(np.float32)


def source_transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's colour and frequency change of one copy of the face."""
    if rng.random() < 0.3:
        image = rgb_shift(image, rng, 20.0)
    image = hsv_jitter(image, rng, hue=4.0, saturation=(0.9, 1.1), value=(0.95, 1.05))
    image = brightness_contrast(image, rng, 0.1, 0.1)
    h, w = image.shape[:2]
    if rng.random() < 0.5:  # downscale by 2 or 4 (nearest) and back (bilinear)
        factor = int(rng.choice([2, 4]))
        small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_NEAREST)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha, lightness = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    effect = np.full((3, 3), -1.0, np.float32)
    effect[1, 1] = 8.0 + lightness
    return cv2.filter2D(image, -1, (1 - alpha) * identity + alpha * effect)


def _random_affine(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    scale = rng.uniform(0.95, 1 / 0.95)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.015, 0.015) * h
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    matrix[:, 2] += (tx, ty)
    return matrix


def _elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float = 50.0, sigma: float = 7.0) -> np.ndarray:
    h, w = mask.shape
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma) * alpha
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _odd(rng: np.random.Generator, low: int = 5, high: int = 26) -> int:
    return int(rng.choice(np.arange(low, high, 2)))


def soft_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, keep the part that stayed at 1 (an erosion by the blur radius), blur again, scale to a
    maximum of 1. Zero everywhere if the hard mask is too thin to survive the erosion."""
    blurred = cv2.GaussianBlur(mask, (_odd(rng),) * 2, 0)
    if blurred.max() <= 0:
        return np.zeros_like(mask)
    blurred /= blurred.max()
    blurred[blurred < 1] = 0
    blurred = cv2.GaussianBlur(blurred, (_odd(rng),) * 2, float(rng.integers(5, 46)))
    return blurred / blurred.max() if blurred.max() > 0 else blurred


def self_blend(
    image: np.ndarray,
    rng: np.random.Generator,
    landmarks: np.ndarray | None = None,
    face_mask: np.ndarray | None = None,
) -> SelfBlend:
    """One SBI pair from a uint8 (H, W, 3) face crop and its landmarks (5 or 68+, crop pixels) or a
    hard face mask (H, W)."""
    h, w = image.shape[:2]
    if landmarks is not None:
        mask = hull_mask(landmarks, (h, w), rng)
    elif face_mask is not None:
        mask = np.asarray(face_mask, dtype=np.float32)
    else:
        raise ValueError("self-blending needs the face's landmarks or a face mask")
    if mask.max() <= 0:
        raise ValueError("the face mask is empty (landmarks outside the crop?)")

    source, target = image, image
    if rng.random() < 0.5:
        source = source_transform(image, rng)
    else:
        target = source_transform(image, rng)

    affine = _random_affine(rng, w, h)
    source = cv2.warpAffine(source, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    work_w, work_h = (int(v) for v in rng.integers(*_WORK_SIZE, size=2))
    work = cv2.resize(
        cv2.warpAffine(mask, affine, (w, h), flags=cv2.INTER_LINEAR), (work_w, work_h), interpolation=cv2.INTER_LINEAR
    )
    work = soft_mask(_elastic(work, rng), rng)
    if work.max() <= 0:
        raise ValueError("the face mask is too small to blend")
    weight = cv2.resize(work, (w, h), interpolation=cv2.INTER_LINEAR) * float(rng.choice(BLEND_RATIOS))
    weight = np.clip(weight, 0.0, 1.0).astype(np.float32)

    blended = weight[..., None] * source.astype(np.float32) + (1.0 - weight[..., None]) * target.astype(np.float32)
    return SelfBlend(real=target, fake=np.clip(np.round(blended), 0, 255).astype(np.uint8), mask=weight)
