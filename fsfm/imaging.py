"""Image decoding with limits: the type is sniffed from the bytes, the size checked from the header
before any pixel is decoded (decompression bombs), and every failure is an ``ImageError`` with a
short machine-readable code.

Decoding is strict: pixel data that ends early (a PNG whose compressed rows stop short of its
height, a JPEG cut off, or cut off and closed with an end marker) is ``corrupt``, never filled in
with zeros or grey; Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off. Pillow reads the header
only. JPEG pixels are decoded by libjpeg-turbo through simplejpeg with ``strict=True``, which makes
libjpeg's corrupt-data warnings errors (OpenCV and Pillow only print them and fill the rest with
grey), and the EXIF orientation from the header is applied; a CMYK JPEG, which simplejpeg cannot
turn into RGB, and PNG and WebP go through OpenCV (libpng, libwebp), EXIF orientation applied.
Either way the pixels land straight in one RGB uint8 array, so a decoded image costs about twice its
array at its peak, not the five copies of a Pillow decode and conversion. Error messages are plain
sentences: never an exception's repr, an object address or a path.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
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
_ORIENTATION = 0x0112  # the EXIF tag


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
                strict_jpeg = kind == "jpeg" and img.mode != "CMYK"
                orientation = img.getexif().get(_ORIENTATION, 1) if strict_jpeg else 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageError("corrupt", f"cannot read the {kind.upper()} header") from None
    check_size(width, height, limits)
    corrupt = ImageError("corrupt", f"the {kind.upper()} pixel data is truncated or corrupt")
    if strict_jpeg:
        try:
            rgb = _oriented(simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True), orientation)
        except ValueError:  # simplejpeg's error for any libjpeg error or warning
            raise corrupt from None
    else:
        try:
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        except cv2.error:
            rgb = None
        if rgb is None:
            raise corrupt
    check_size(rgb.shape[1], rgb.shape[0], limits)  # EXIF rotation swaps sides
    return rgb


def _oriented(rgb: np.ndarray, orientation: object) -> np.ndarray:
    """``rgb`` as the EXIF orientation (1-8) says to display it (Pillow's ``exif_transpose``)."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }.get(orientation if isinstance(orientation, int) else 1)
    return rgb if turned is None else np.ascontiguousarray(turned(rgb))


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
