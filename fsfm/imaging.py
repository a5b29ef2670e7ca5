"""Image decoding with limits: the type is sniffed from the bytes, the size checked from the header
before any pixel is decoded (decompression bombs), and every failure is an ``ImageError`` with a
short machine-readable code.

Decoding is strict: pixel data that ends early (a PNG whose compressed rows stop short of its
height, a JPEG cut off) is ``corrupt``, never filled in with zeros; Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off. Pillow reads the header only; OpenCV (libpng,
libjpeg-turbo, libwebp) decodes the pixels straight into one RGB uint8 array, with the EXIF
orientation applied, so a decoded image costs about twice its array at its peak (OpenCV's buffer and
the array it is copied into), not the five copies of a Pillow decode and conversion. Error messages
are plain sentences: never an exception's repr, an object address or a path.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile
from pydantic import BaseModel, Field

# We check sizes ourselves before decoding; PIL's own guard would only warn below 2x its limit.
Image.MAX_IMAGE_PIXELS = None
# Truncated pixel data is an error, never zero-filled (Pillow's default; stated because the strict decode relies on it).
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SIGNATURES: dict[str, tuple[tuple[int, bytes], ...]] = {
    "jpeg": ((0, b"\xff\xd8\xff"),),
    "png": ((0, b"\x89PNG\r\n\x1a\n"),),
    "webp": ((0, b"RIFF"), (8, b"WEBP")),
}
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


class ImageError(ValueError):
    """Input that is not a usable image. ``code`` is one of: empty, unsupported_type, too_large,
    corrupt."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ImageLimits(BaseModel):
    max_pixels: int = Field(default=40_000_000, ge=1, description="width x height, checked before decoding")
    max_side: int = Field(default=12_000, ge=1, description="longest side in pixels")


def sniff_image_type(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'webp' from the magic bytes, or None."""
    for kind, signature in IMAGE_SIGNATURES.items():
        if all(data[offset : offset + len(magic)] == magic for offset, magic in signature):
            return kind
    return None


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageError(
            "too_large",
            f"image is {width}x{height}; limits are {limits.max_side} px per side and {limits.max_pixels} pixels",
        )


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """JPEG/PNG/WebP bytes -> RGB uint8 (H, W, 3), EXIF orientation applied; strict (see the module docstring)."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("empty", "empty input (0 bytes)")
    kind = sniff_image_type(data)
    if kind is None:
        raise ImageError("unsupported_type", "not a JPEG, PNG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd-but-readable metadata
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as img:
                width, height = img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageError("corrupt", f"cannot read the {kind.upper()} header") from None
    check_size(width, height, limits)
    try:
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    except cv2.error:
        rgb = None
    if rgb is None:
        raise ImageError("corrupt", f"the {kind.upper()} pixel data is truncated or corrupt")
    check_size(rgb.shape[1], rgb.shape[0], limits)  # EXIF rotation swaps sides
    return rgb


def read_file(path: str | Path) -> bytes:
    """A file's bytes; file-system errors become ``ImageError`` (``not_found``, ``unreadable``)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError("not_found", f"no such file: {path}") from exc
    except IsADirectoryError as exc:
        raise ImageError("not_found", f"is a directory: {path}") from exc
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read {path}: {exc.strerror}") from exc


def read_image_file(path: str | Path, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode an image file, mapping file-system errors to ``ImageError`` too."""
    return decode_image(read_file(path), limits)
