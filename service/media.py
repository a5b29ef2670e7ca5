"""The media step: encoded bytes (an image or a short video) or raw RGB pixels -> decoded frames.

The analysis core calls it for every request that carries media, whichever door it came through, so
an image or a video means the same over REST and gRPC. The type is sniffed from the bytes (never
from a file name or a header): JPEG, PNG or WebP images (``fsfm.imaging``); MP4/MOV or WebM/Matroska
videos, decoded from memory with PyAV (nothing on disk). Limits, all checked before pixels are
decoded where the container allows: ``ImageLimits`` per image or frame, the video's duration, and
the number of frames sampled, evenly (``max_frames``, FSFM's ``linspace`` sampling) or at ``fps``,
and the pixels of the sampled frames in all (``max_pixels``: fewer frames are sampled, at least one).

``Media.frames`` is an iterator, consumed once: a video's frames are decoded as it is iterated, so a
consumer that keeps only what it needs of each frame holds one frame at a time, never the video.

Every failure is an ``AnalysisError`` with a stable reason: ``empty``, ``unsupported_type``,
``corrupt``, ``too_large`` (images); ``no_video_stream``, ``unsupported_codec``, ``video_too_long``,
``corrupt_video``, ``bad_fps`` (videos); ``bad_raw_image`` (raw pixels).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

import av
import numpy as np

from fsfm.imaging import ImageError, ImageLimits, check_size, decode_image, sniff_image_type
from service.cancellation import stop_if_ended
from service.errors import AnalysisError, BadInput, TooLarge, UnsupportedMedia

MediaKind = Literal["image", "video"]
MEDIA_KINDS: frozenset[MediaKind] = frozenset({"image", "video"})
MAX_SAMPLING_FPS = 120.0  # a request's ``fps``, at most: beyond any camera's rate, so only a typo asks more
IMAGE_REASONS = frozenset({"empty", "unsupported_type", "corrupt", "too_large", "bad_raw_image"})  # an unusable image
_SAME_TIME_S = 1e-6  # frame times closer than this count as equal (container time bases round)
_FALLBACK_FPS = 25.0  # frame rate assumed for frames without a timestamp in a stream without a rate


class Frame(NamedTuple):
    """One decoded picture: its number in the video (0 for an image), its time, RGB uint8 (H, W, 3)."""

    index: int
    time_s: float
    rgb: np.ndarray


@dataclass(frozen=True)
class Sampling:
    """How a video is read: its longest duration, the frames sampled at most, an optional rate, and
    the pixels of all sampled frames at most (``None``: no budget)."""

    max_seconds: float
    max_frames: int
    fps: float | None = None
    max_pixels: int | None = None


@dataclass
class Media:
    """An image's one frame or a video's sampled frames, decoded as ``frames`` is iterated (once);
    ``planned``: how many frames it will give at most (a video's pixel budget may stop it sooner)."""

    kind: MediaKind
    frames: Iterator[Frame]
    planned: int = 1


class VideoFrames(Iterator[Frame]):
    """A video's sampled frames, decoded as they are iterated; ``planned``: the frames sampled at most."""

    def __init__(self, frames: Iterator[Frame], planned: int) -> None:
        self._frames = frames
        self.planned = planned

    def __next__(self) -> Frame:
        return next(self._frames)


_IMAGE_ERRORS: dict[str, type[AnalysisError]] = {
    "empty": BadInput,
    "corrupt": BadInput,
    "unsupported_type": UnsupportedMedia,
    "too_large": TooLarge,
}


def image_error(exc: ImageError) -> AnalysisError:
    """The service's error for an ``ImageError`` of ``fsfm.imaging``."""
    return _IMAGE_ERRORS.get(exc.code, BadInput)(exc.code, str(exc))


def sniff_video_type(data: bytes) -> str | None:
    """'mp4' (ISO BMFF: MP4/MOV), 'webm' (Matroska/WebM) from the magic bytes, or None."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


class EncodedMedia:
    """A request's encoded bytes, handed to the core once: ``take`` gives them up, so that once they
    are decoded nothing of the request holds them (a job's media is dropped as soon as it is decoded,
    not kept while its faces wait for inference). A video's frames hold them until their decoding ends
    (``decode_video`` closes the container then)."""

    __slots__ = ("_data", "size")

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self.size = len(data)

    @property
    def taken(self) -> bool:
        return self._data is None

    def take(self) -> bytes:
        if self._data is None:
            raise RuntimeError("the media was already taken")
        data, self._data = self._data, None
        return data


def media_kind(data: bytes, accept: Collection[MediaKind] = MEDIA_KINDS) -> MediaKind:
    """What ``decode_media`` takes ``data`` for, by its first bytes: an image when they say so (or when only
    images are accepted: decoding then says what is wrong), a video when they say so; else
    ``UnsupportedMedia``. Nothing is decoded."""
    if "image" in accept and (sniff_image_type(data) is not None or "video" not in accept):
        return "image"
    if sniff_video_type(data) is None:
        kinds = "a JPEG, PNG or WebP image, nor an MP4 or WebM video" if "image" in accept else "an MP4 or WebM video"
        raise UnsupportedMedia("unsupported_type", f"not {kinds}")
    return "video"


def decode_media(data: bytes, accept: Collection[MediaKind], limits: ImageLimits, sampling: Sampling) -> Media:
    """Encoded bytes -> an image's one frame or a video's sampled frames, for the kinds in ``accept``."""
    if not data:
        raise BadInput("empty", "the media is empty (0 bytes)")
    if media_kind(data, accept) == "image":
        try:
            return Media("image", iter([Frame(0, 0.0, decode_image(data, limits))]))
        except ImageError as exc:
            raise image_error(exc) from None
    frames = decode_video(data, limits, sampling.max_seconds, sampling.max_frames, sampling.fps, sampling.max_pixels)
    return Media("video", frames, frames.planned)


def raw_frame(width: int, height: int, rgb: bytes, limits: ImageLimits) -> np.ndarray:
    """Packed RGB pixels as an RGB uint8 (H, W, 3) array over the given bytes (no copy)."""
    if width == 0 or height == 0:
        raise BadInput("bad_raw_image", f"raw image size {width}x{height}: width and height must be > 0")
    try:
        check_size(width, height, limits)
    except ImageError as exc:
        raise image_error(exc) from None
    expected = width * height * 3
    if len(rgb) != expected:
        raise BadInput(
            "bad_raw_image", f"a {width}x{height} raw image needs {expected} bytes of packed RGB; got {len(rgb)}"
        )
    return np.frombuffer(rgb, np.uint8).reshape(height, width, 3)


def _sample_times(duration: float, max_frames: int, fps: float | None) -> list[float]:
    """Target timestamps: every 1/fps seconds, or ``max_frames`` evenly over the duration
    (FSFM's ``linspace`` sampling), at most ``max_frames`` either way."""
    if fps is not None:
        count = min(max_frames, max(1, int(duration * fps) + 1))
        return [i / fps for i in range(count)]
    if duration <= 0:
        return [0.0]
    return list(np.linspace(0.0, duration, max_frames, endpoint=False))


def decode_video(
    data: bytes,
    limits: ImageLimits,
    max_seconds: float,
    max_frames: int,
    fps: float | None = None,
    max_pixels: int | None = None,
) -> VideoFrames:
    """Video bytes -> the sampled frames ``(frame_index, time_s, rgb uint8 (H, W, 3))``, decoded one
    at a time as the iterator is advanced. The header (stream, codec, duration, frame size) is checked
    here; a frame that fails to decode raises while iterating. ``max_pixels`` caps the sampled frames'
    pixels in all: fewer frames are sampled (at least one)."""
    if fps is not None and fps <= 0:
        raise BadInput("bad_fps", "fps must be positive")
    with _video_errors():
        container = av.open(io.BytesIO(data), mode="r")
    try:
        with _video_errors():
            stream = _video_stream(container)
            duration = _duration(container, stream)
            if duration > max_seconds:
                raise TooLarge("video_too_long", f"video lasts {duration:.1f} s; the limit is {max_seconds:g} s")
            width, height = stream.codec_context.width, stream.codec_context.height
            check_size(width, height, limits)
            if max_pixels is not None:
                max_frames = max(1, min(max_frames, max_pixels // max(1, width * height)))
            targets = _sample_times(duration, max_frames, fps)
    except BaseException:
        container.close()
        raise
    return VideoFrames(_decoded_frames(container, stream, targets, limits, max_pixels), len(targets))


@contextmanager
def _video_errors() -> Iterator[None]:
    """PyAV's and the limits' exceptions -> the service's errors."""
    try:
        yield
    except (UnsupportedMedia, TooLarge, BadInput):
        raise
    except ImageError as exc:
        raise TooLarge("too_large", str(exc)) from None
    except av.error.DecoderNotFoundError as exc:
        raise UnsupportedMedia("unsupported_codec", f"no decoder for this video codec: {exc}") from None
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise BadInput("corrupt_video", f"cannot decode the video: {exc}") from None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise UnsupportedMedia("no_video_stream", "the file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # the demuxer knows the stream, FFmpeg has no decoder
        raise UnsupportedMedia("unsupported_codec", "no decoder for this video's codec")
    stream.thread_type = "AUTO"
    return stream


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _decoded_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: list[float],
    limits: ImageLimits,
    max_pixels: int | None,
) -> Iterator[Frame]:
    """Decode sequentially and yield the first frame at or after each target time, within the pixel
    budget (a stream whose frames grow midway stops at it); the container closes when this ends."""
    with container, _video_errors():
        next_target = picked = pixels = 0
        rate = float(stream.average_rate or _FALLBACK_FPS)
        for index, frame in enumerate(container.decode(stream)):
            stop_if_ended()
            if next_target >= len(targets):
                break
            time_s = float(frame.time) if frame.time is not None else index / rate
            if time_s + _SAME_TIME_S < targets[next_target]:
                continue
            check_size(frame.width, frame.height, limits)
            pixels += frame.width * frame.height
            if picked and max_pixels is not None and pixels > max_pixels:
                break
            yield Frame(index, round(time_s, 3), frame.to_ndarray(format="rgb24"))
            picked += 1
            while next_target < len(targets) and targets[next_target] <= time_s + _SAME_TIME_S:
                next_target += 1
        if not picked:
            raise BadInput("corrupt_video", "no decodable frame in the video")
