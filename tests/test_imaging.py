"""Image decoding rejects bad input with a clear code, before any expensive work."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fsfm.imaging import ImageError, ImageLimits, decode_image, sniff_image_type


def png_bomb(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of side x side zeros: tiny on disk, side² pixels decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decodes_supported_formats(photo, fmt) -> None:
    image = decode_image(encode(photo, fmt))
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    if fmt == "PNG":  # lossless
        assert np.array_equal(image, photo)


def test_type_is_sniffed_from_bytes_not_names(photo) -> None:
    assert sniff_image_type(encode(photo, "PNG")) == "png"
    assert sniff_image_type(encode(photo, "JPEG")) == "jpeg"
    assert sniff_image_type(b"GIF89a....") is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"hello, I am text and not an image", "unsupported_type"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 30, "corrupt"),
    ],
)
def test_bad_bytes_get_a_code(data, code) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.code == code


def test_truncated_jpeg_is_corrupt(photo) -> None:
    data = encode(np.tile(photo, (8, 8, 1)), "JPEG")
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.code == "corrupt"


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(20_000)
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageError) as info:
        decode_image(bomb)
    assert info.value.code == "too_large" and "20000x20000" in str(info.value)


def test_limits_are_configurable(photo) -> None:
    with pytest.raises(ImageError, match="too_large|limits"):
        decode_image(encode(photo, "PNG"), ImageLimits(max_side=32))


def test_pixel_data_that_ends_early_is_refused_not_zero_filled() -> None:
    from benchmarks.hostile_inputs import truncated_png

    data = truncated_png(side=4000, rows=10)  # a finished zlib stream: only the row count shows the cut
    assert len(data) < 300
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.code == "corrupt"
    assert "<" not in str(info.value) and "0x" not in str(info.value)  # no reprs, no addresses


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_cut_off_image_is_corrupt_whatever_its_format(photo, fmt) -> None:
    data = encode(np.tile(photo, (8, 8, 1)), fmt)
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) * 2 // 3])
    assert info.value.code == "corrupt" and fmt in str(info.value)


def test_exif_orientation_is_applied(photo) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG", exif=exif.tobytes())
    assert np.array_equal(decode_image(buffer.getvalue()), np.rot90(photo, k=-1))


def test_a_jpeg_cut_off_and_closed_with_an_end_marker_is_corrupt_not_grey(photo) -> None:
    """libjpeg only warns here ("premature end of data segment") and fills the rest with grey;
    the strict decode makes the warning an error."""
    data = encode(np.tile(photo, (8, 8, 1)), "JPEG")
    with pytest.raises(ImageError) as info:
        decode_image(data[: len(data) // 2] + b"\xff\xd9")
    assert info.value.code == "corrupt" and "JPEG" in str(info.value)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_jpeg_is_applied_as_pillow_applies_it(photo, orientation) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(photo[:40, :56]).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.int16)
    got = decode_image(buffer.getvalue())
    assert got.shape == expected.shape and got.flags["C_CONTIGUOUS"]
    assert np.abs(got.astype(np.int16) - expected).mean() < 2  # both libjpeg; rounding may differ


def test_a_cmyk_jpeg_is_decoded_to_rgb(photo) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buffer, format="JPEG", quality=95)
    rgb = decode_image(buffer.getvalue())
    assert rgb.shape == photo.shape and np.abs(rgb.astype(int) - photo).mean() < 12
