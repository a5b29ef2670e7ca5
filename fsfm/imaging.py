"""Image decoding with limits: the type is sniffed from the bytes, the size checked from the header
before any pixel is decoded (decompression bombs), and every failure is an ``ImageError`` with a
short machine-readable code."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, Field

# We check sizes ourselves before decoding; PIL's own guard would only warn below 2x its limit.
Image.MAX_IMAGE_PIXELS = None

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
    """JPEG/PNG/WebP bytes -> RGB uint8 (H, W, 3), EXIF orientation applied."""
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
                check_size(img.width, img.height, limits)
                img.load()  # raises on truncated or corrupt data
                img = ImageOps.exif_transpose(img)
                rgb = img.convert("RGB")
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError("corrupt", f"cannot decode {kind.upper()}: {exc}") from exc
    check_size(rgb.width, rgb.height, limits)  # EXIF rotation swaps sides
    return np.asarray(rgb)


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
