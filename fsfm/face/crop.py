"""The crop convention (FSFM's): box -> enlarged square -> resize [-> resize + centre crop] -> normalised CHW
tensor.

The official code has two test transforms of a face crop: a plain resize to 224 (the paper's test log) and,
with ``--apply_simple_augment`` (the README's commands, also the fine-tuning validation transform), a resize
to 256 and a centre crop of 224. ``CropSpec.center_crop_from`` says which one a model takes.

Every parameter lives in a model's manifest (``CropSpec`` and ``Normalization``), so a model is
always fed the crops it was trained on, in training and in serving alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

# Pretraining-set statistics of the official VGGFace2 FSFM model (its pretrain_ds_mean_std.txt; also the
# fallback of upstream FSFM-CVPR25 ``fsfm-3c/util/datasets.py`` ``build_transform``).
VGGFACE2_MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
VGGFACE2_STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class BoxTransform(BaseModel):
    """Maps our detector's box onto the box of the detector a model was trained with.

    centre += (dx * w, dy * h); size *= (sw, sh). Identity for models trained on our own crops;
    for official FSFM weights (trained on dlib boxes) it holds the measured dlib mapping.
    """

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + self.dx * w, (y1 + y2) / 2 + self.dy * h
        w, h = w * self.sw, h * self.sh
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)


# Our MTCNN boxes mapped onto dlib frontal-detector boxes, the boxes official FSFM weights were trained
# on: medians over 48 faces found by both (scripts/measure_box_transform.py; interquartile ranges
# dx 0.16, dy 0.06, sw 0.15, sh 0.12). dlib's box sits lower and is much shorter: it leaves out the
# forehead that MTCNN includes.
DLIB_BOX_TRANSFORM = BoxTransform(dx=0.0063, dy=0.0533, sw=1.049, sh=0.8023)


class CropSpec(BaseModel):
    """How a face box becomes the model's input crop.

    The square has side ``scale * max(w, h)`` of the (transformed) box, centred on it. At image
    borders ``border="shift"`` is FSFM's rule (top-left clipped at 0, the square cut at the far
    edges, so the crop may be off-centre and non-square before resizing); ``"pad"`` keeps the face
    centred and fills outside pixels with zeros.
    """

    size: int = Field(default=224, ge=16)
    scale: float = Field(default=1.3, gt=0.0)
    box_transform: BoxTransform = Field(default_factory=BoxTransform)
    border: Literal["shift", "pad"] = "shift"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    min_face_size: int = Field(default=32, ge=0, description="faces with a smaller box side are not judged")
    center_crop_from: int | None = Field(
        default=None,
        description="when set, the size-px crop is resized (bicubic) to this side and its centre size x size "
        "kept: the official README's test transform (256 for 224, center_crop_side); none: the paper's plain resize",
    )


def center_crop_side(size: int) -> int:
    """The side the official ``--apply_simple_augment`` test transform resizes to before its centre crop of
    ``size``: size / (224 / 256) up to 224 (256 for 224), ``size`` itself above (no crop)."""
    return int(size / (224 / 256)) if size <= 224 else size


def center_crop(pixels: np.ndarray, size: int, side: int, interpolation: str = "bicubic") -> np.ndarray:
    """uint8 (h, w, 3) -> resized so its shorter side is ``side`` (the longer in proportion) -> the centre
    ``size`` x ``size``, as torchvision's ``Resize(side)`` + ``CenterCrop(size)`` on a PIL image."""
    pil = Image.fromarray(np.ascontiguousarray(pixels))
    w, h = pil.size
    scaled = pil.resize(
        (side, max(side, int(side * h / w))) if w <= h else (max(side, int(side * w / h)), side),
        _PIL_FILTERS[interpolation],
    )
    left, top = int(round((scaled.size[0] - size) / 2)), int(round((scaled.size[1] - size) / 2))
    return np.asarray(scaled.crop((left, top, left + size, top + size)))


class Normalization(BaseModel):
    """Per-channel RGB mean/std on the [0, 1] scale."""

    mean: tuple[float, float, float] = VGGFACE2_MEAN
    std: tuple[float, float, float] = VGGFACE2_STD

    @classmethod
    def from_mean_std_file(cls, path: str | Path) -> Normalization:
        """FSFM's ``pretrain_ds_mean_std.txt``: JSON lines ``{"mean": [...], "std": [...]}``, appended
        on every pretraining launch; readers take the first line (as upstream ``build_transform``)."""
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty")
        first = json.loads(lines[0])
        return cls(mean=tuple(first["mean"]), std=tuple(first["std"]))

    def to_mean_std_line(self) -> str:
        return json.dumps({"mean": list(self.mean), "std": list(self.std)})


def crop_region(box: np.ndarray, image_w: int, image_h: int, spec: CropSpec) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2) of the square crop in image pixels (may exceed the image for "pad")."""
    x1, y1, x2, y2 = spec.box_transform.apply(box)
    side = int(spec.scale * max(x2 - x1, y2 - y1))
    left = int((x1 + x2) / 2 - side / 2)
    top = int((y1 + y2) / 2 - side / 2)
    if spec.border == "pad":
        return left, top, left + side, top + side
    left, top = max(left, 0), max(top, 0)
    return left, top, min(left + side, image_w), min(top + side, image_h)


def crop_face(image: np.ndarray, box: np.ndarray, spec: CropSpec) -> np.ndarray:
    """RGB uint8 (H, W, 3) image + box -> RGB uint8 (size, size, 3) crop."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = crop_region(box, w, h, spec)
    if spec.border == "pad":
        patch = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    else:
        patch = image[y1:y2, x1:x2]
    if patch.size == 0:
        raise ValueError(f"empty crop for box {box.tolist()} in a {w}x{h} image")
    # PIL's resize filters are antialiased when shrinking, as torchvision's Resize on PIL images
    # (FSFM's training transform) is; cv2's are not.
    resized = Image.fromarray(np.ascontiguousarray(patch)).resize(
        (spec.size, spec.size), _PIL_FILTERS[spec.interpolation]
    )
    if spec.center_crop_from is not None:
        return center_crop(np.asarray(resized), spec.size, spec.center_crop_from, spec.interpolation)
    return np.asarray(resized)


def normalize(crops: np.ndarray, norm: Normalization) -> np.ndarray:
    """uint8 (..., H, W, 3) RGB -> float32 (..., 3, H, W) standardised with ``norm``."""
    x = crops.astype(np.float32) / 255.0
    x = (x - np.asarray(norm.mean, np.float32)) / np.asarray(norm.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))
