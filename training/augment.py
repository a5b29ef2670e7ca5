"""Image augmentations for fine-tuning, on PIL images / uint8 arrays, every random draw taken from an
explicit ``numpy.random.Generator`` (so a pair of images can get identical augmentations, and a
sample's augmentation is reproducible from its seed).

Recipes (``TrainTransform(kind=...)``):

* ``simple``: FSFM's ``--apply_simple_augment`` = timm ``create_transform`` (upstream FSFM-CVPR25
  ``fsfm-3c/util/datasets.py`` ``build_transform``): RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3,
  bilinear), horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1`` (geometric ops fill with 255 x the
  normalisation mean, as timm is called there: (140, 108, 93) for the VGGFace2 statistics), normalise,
  RandomErasing (pixel mode) with probability ``reprob``.
* ``sbi``: SBI's training augmentation (mild crop jitter, flip, RGB/HSV/brightness-contrast jitter,
  JPEG quality 40-100); no RandAugment or erasing, which could wipe out the blending boundary.
* ``fas``: the FAS recipe (docs/finetuning.md): HSV saturation x U(0.8, 1.2) with p 0.5, resize, flip.
* ``none``: resize only.

Evaluation (``eval_pixels``): plain resize to the input size (bicubic; the paper's DfD test run) or
resize to 256 + centre crop 224 (the official ``--apply_simple_augment`` validation and test transform).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from fsfm.face.crop import Normalization, center_crop, center_crop_side, normalize

AugmentKind = Literal["simple", "sbi", "fas", "none"]
EvalMode = Literal["resize", "center_crop"]

Fill = tuple[int, int, int]
_BILINEAR, _BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


# --------------------------------------------------------------------------------------- geometry
def random_resized_crop(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: Image.Resampling = _BILINEAR,
) -> Image.Image:
    """torchvision's RandomResizedCrop: 10 tries at a random area share and log-uniform aspect,
    then a centre crop clamped to the ratio range."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return image.resize((size, size), interpolation, box=(left, top, left + w, top + h))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return image.resize((size, size), interpolation, box=(left, top, left + w, top + h))


def random_hflip(image: Image.Image, rng: np.random.Generator, p: float = 0.5) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < p else image


# ------------------------------------------------------------------------------------ RandAugment
def fill_colour(norm: Normalization) -> Fill:
    """RandAugment's fill for pixels moved in from outside the image: 255 x the normalisation mean, rounded
    (timm's ``img_mean``, from the mean the official fine-tuning normalises with)."""
    r, g, b = (min(255, round(255 * m)) for m in norm.mean)
    return r, g, b


def _affine(image: Image.Image, matrix: tuple[float, ...], fill: Fill) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=_BILINEAR, fillcolor=fill)


Op = Callable[[Image.Image, float, np.random.Generator, Fill], Image.Image]


def _enhance(enhancer: type) -> Op:
    """ColorIncreasing & co.: factor 1 +- 0.9 * m / 10."""
    return lambda img, m, rng, fill: enhancer(img).enhance(1.0 + _sign(rng) * 0.9 * m / 10)


def _solarize_add(image: Image.Image, m: float, rng: np.random.Generator, fill: Fill) -> Image.Image:
    add = int(m / 10 * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


# timm's ``_RAND_INCREASING_TRANSFORMS`` (higher magnitude = stronger for every op), magnitude m in 0..10.
RAND_AUGMENT_OPS: dict[str, Op] = {
    "AutoContrast": lambda img, m, rng, fill: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng, fill: ImageOps.equalize(img),
    "Invert": lambda img, m, rng, fill: ImageOps.invert(img),
    "Rotate": lambda img, m, rng, fill: img.rotate(_sign(rng) * 30 * m / 10, resample=_BILINEAR, fillcolor=fill),
    "PosterizeIncreasing": lambda img, m, rng, fill: ImageOps.posterize(img, max(1, 4 - int(4 * m / 10))),
    "SolarizeIncreasing": lambda img, m, rng, fill: ImageOps.solarize(img, 256 - int(256 * m / 10)),
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, m, rng, fill: _affine(img, (1, _sign(rng) * 0.3 * m / 10, 0, 0, 1, 0), fill),
    "ShearY": lambda img, m, rng, fill: _affine(img, (1, 0, 0, _sign(rng) * 0.3 * m / 10, 1, 0), fill),
    "TranslateXRel": lambda img, m, rng, fill: _affine(
        img, (1, 0, _sign(rng) * 0.45 * m / 10 * img.size[0], 0, 1, 0), fill
    ),
    "TranslateYRel": lambda img, m, rng, fill: _affine(
        img, (1, 0, 0, 0, 1, _sign(rng) * 0.45 * m / 10 * img.size[1]), fill
    ),
}


def rand_augment(
    image: Image.Image,
    rng: np.random.Generator,
    fill: Fill,
    layers: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    p: float = 0.5,
) -> Image.Image:
    """``rand-m9-mstd0.5-inc1``: ``layers`` ops drawn uniformly with replacement, each applied with
    probability ``p`` at a magnitude ~ N(m, std) clipped to [0, 10]; geometric ops fill with ``fill``."""
    names = list(RAND_AUGMENT_OPS)
    for index in rng.integers(0, len(names), size=layers):
        if rng.random() >= p:
            continue
        m = float(np.clip(rng.normal(magnitude, magnitude_std), 0.0, 10.0))
        image = RAND_AUGMENT_OPS[names[index]](image, m, rng, fill)
    return image


# --------------------------------------------------------------------------------------- colour
def rgb_shift(image: np.ndarray, rng: np.random.Generator, limit: float = 20.0) -> np.ndarray:
    shift = rng.uniform(-limit, limit, size=3)
    return np.clip(image.astype(np.float32) + shift, 0, 255).astype(np.uint8)


def hsv_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    hue: float = 0.0,
    saturation: tuple[float, float] = (1.0, 1.0),
    value: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Hue shifted by up to +-``hue`` degrees; saturation and value multiplied by a factor drawn from
    their ranges."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)  # H in 0..180
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue) / 2) % 180
    hsv[..., 1] *= rng.uniform(*saturation)
    hsv[..., 2] *= rng.uniform(*value)
    return cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float) -> np.ndarray:
    """albumentations' RandomBrightnessContrast: x * (1 + c) + b * 255."""
    alpha = 1.0 + rng.uniform(-contrast, contrast)
    beta = rng.uniform(-brightness, brightness) * 255
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, rng: np.random.Generator, quality: tuple[int, int] = (40, 100)) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(rng.integers(quality[0], quality[1] + 1)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


# -------------------------------------------------------------------------------------- erasing
def random_erasing(
    x: torch.Tensor,
    rng: np.random.Generator,
    p: float,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
) -> torch.Tensor:
    """timm RandomErasing, pixel mode, one box: a random rectangle of the normalised (3, H, W) image
    filled with N(0, 1) noise per pixel and channel."""
    if rng.random() >= p:
        return x
    _, height, width = x.shape
    for _ in range(10):
        target = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if w < width and h < height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            x = x.clone()
            x[:, top : top + h, left : left + w] = torch.from_numpy(rng.standard_normal((3, h, w)).astype(np.float32))
            return x
    return x


# ----------------------------------------------------------------------------------- transforms
def to_tensor(image: np.ndarray, norm: Normalization) -> torch.Tensor:
    """uint8 (H, W, 3) -> normalised float32 (3, H, W)."""
    return torch.from_numpy(normalize(image, norm))


def eval_pixels(image: np.ndarray, size: int, mode: EvalMode = "resize") -> np.ndarray:
    """The evaluation crop of a uint8 (H, W, 3) face: (size, size, 3) uint8. ``center_crop`` is the official
    ``--apply_simple_augment`` test transform: the shorter side resized to ``center_crop_side(size)`` (256 for
    224), then the centre ``size`` x ``size`` (``fsfm.face.crop.center_crop``, as a package's crop does)."""
    if mode == "center_crop":
        return center_crop(image, size, center_crop_side(size))
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((size, size), _BICUBIC)) if pil.size != (size, size) else image


class EvalTransform:
    """uint8 face -> normalised tensor at the model's input size, deterministically."""

    def __init__(self, size: int, norm: Normalization, mode: EvalMode = "resize") -> None:
        self.size, self.norm, self.mode = size, norm, mode

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(eval_pixels(image, self.size, self.mode), self.norm)


class TrainTransform:
    """uint8 face + generator -> augmented, normalised (3, size, size) tensor (see the module doc)."""

    def __init__(self, kind: AugmentKind, size: int, norm: Normalization, reprob: float = 0.0) -> None:
        self.kind, self.size, self.norm, self.reprob = kind, size, norm, reprob
        self.fill = fill_colour(norm)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.kind == "simple":
            pil = random_resized_crop(Image.fromarray(image), rng, self.size)
            pil = rand_augment(random_hflip(pil, rng), rng, self.fill)
            pixels = np.asarray(pil.convert("RGB"))
        elif self.kind == "sbi":
            pil = random_resized_crop(Image.fromarray(image), rng, self.size, scale=(0.7, 1.0), ratio=(0.9, 1.1))
            pixels = np.asarray(random_hflip(pil, rng))
            if rng.random() < 0.3:
                pixels = rgb_shift(pixels, rng)
            if rng.random() < 0.3:
                pixels = hsv_jitter(pixels, rng, hue=10.0, saturation=(0.7, 1.3), value=(0.7, 1.3))
            if rng.random() < 0.3:
                pixels = brightness_contrast(pixels, rng, 0.3, 0.3)
            if rng.random() < 0.5:
                pixels = jpeg(pixels, rng)
        elif self.kind == "fas":
            pixels = image if rng.random() >= 0.5 else hsv_jitter(image, rng, saturation=(0.8, 1.2))
            pil = Image.fromarray(pixels).resize((self.size, self.size), _BILINEAR)
            pixels = np.asarray(random_hflip(pil, rng))
        else:
            pixels = eval_pixels(image, self.size, "resize")
        return random_erasing(to_tensor(pixels, self.norm), rng, self.reprob)
