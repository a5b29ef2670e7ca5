"""Hostile inputs: small uploads inside the default limits that ask for much decoding work, shared by
the hostile-load benchmark and the tests that bound a request's cost.

``hostile_inputs()`` builds them in memory, deterministically (a few seconds):

- ``png_zeros_6000``: an 8-bit RGB PNG of 6000x6000 black pixels, about 100 KB (36 MP decoded).
- ``jpeg_6000``: a smooth 6000x6000 JPEG (colour gradients), about 1.4 MB.
- ``mp4_64x2000``: an H.264 MP4 of 64 frames at 2000x2000 (a still picture with a moving bar), about 0.1 MB.
- ``png_truncated_4000``: a 196-byte PNG declaring 4000x4000 whose compressed stream ends after 10 rows;
  a strict decoder refuses it (400 ``corrupt``) instead of filling the missing rows with zeros.
- ``jpeg_cut_closed_4000``: a 4000x4000 JPEG cut in half and closed with an end-of-image marker;
  libjpeg only warns and fills the rest with grey, a strict decoder refuses it (400 ``corrupt``).

The designed answers: 200, 200, 200, 400 and 400 (``HOSTILE_STATUS``).
"""

from __future__ import annotations

import io
import struct
import zlib

import av
import cv2
import numpy as np

HOSTILE_STATUS = {
    "png_zeros_6000": 200,
    "jpeg_6000": 200,
    "mp4_64x2000": 200,
    "png_truncated_4000": 400,
    "jpeg_cut_closed_4000": 400,
}
JPEG_QUALITY = 90
VIDEO_FPS = 25


def _png(width: int, height: int, rows: int) -> bytes:
    """An 8-bit RGB PNG of black pixels whose compressed data holds ``rows`` rows (all of them when
    ``rows == height``); the zlib stream is finished either way, so only the row count betrays a cut."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + 3 * width)  # filter byte + RGB
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def zero_png(side: int = 6000) -> bytes:
    """A valid side x side PNG of black pixels."""
    return _png(side, side, side)


def truncated_png(side: int = 4000, rows: int = 10) -> bytes:
    """A PNG declaring side x side whose pixel data ends after ``rows`` rows."""
    return _png(side, side, rows)


def smooth_jpeg(side: int = 6000, seed: int = 0) -> bytes:
    """A side x side JPEG of smooth colour gradients (compresses well, decodes to side² pixels)."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def cut_closed_jpeg(side: int = 4000) -> bytes:
    """``smooth_jpeg(side)`` cut in half and closed with an end-of-image marker (FF D9)."""
    data = smooth_jpeg(side)
    return data[: len(data) // 2] + b"\xff\xd9"


def still_mp4(side: int = 2000, frames: int = 64) -> bytes:
    """An H.264 MP4 of ``frames`` side x side frames: a grey gradient with a bar that moves."""
    gradient = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    picture = np.repeat(np.repeat(gradient[None, :, None], side, axis=0), 3, axis=2)
    bar = side // 32
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=VIDEO_FPS, options={"preset": "ultrafast", "crf": "35"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            frame = picture.copy()
            left = k * (side - bar) // max(1, frames - 1)
            frame[:, left : left + bar] = 255
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    return buffer.getvalue()


def hostile_inputs() -> dict[str, bytes]:
    """The hostile uploads by name (see the module docstring); their answers are ``HOSTILE_STATUS``."""
    return {
        "png_zeros_6000": zero_png(),
        "jpeg_6000": smooth_jpeg(),
        "mp4_64x2000": still_mp4(),
        "png_truncated_4000": truncated_png(),
        "jpeg_cut_closed_4000": cut_closed_jpeg(),
    }
