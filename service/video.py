"""Short-video decoding for the REST door: sniffed container, duration and size limits, frames
sampled evenly (``max_frames``) or at a rate (``fps``), decoded from memory (nothing on disk)."""

from __future__ import annotations

import io

import av
import numpy as np

from fsfm.imaging import ImageError, ImageLimits, check_size
from service.errors import BadInput, TooLarge, UnsupportedMedia


def sniff_video_type(data: bytes) -> str | None:
    """'mp4' (ISO BMFF: MP4/MOV), 'webm' (Matroska/WebM) from the magic bytes, or None."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    return None


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
) -> list[tuple[int, float, np.ndarray]]:
    """Video bytes -> ``[(frame_index, time_s, rgb uint8 (H, W, 3))]`` of the sampled frames."""
    if fps is not None and fps <= 0:
        raise BadInput("bad_fps", "fps must be positive")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise UnsupportedMedia("no_video_stream", "the file has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # the demuxer knows the stream, FFmpeg has no decoder
                raise UnsupportedMedia("unsupported_codec", "no decoder for this video's codec")
            stream.thread_type = "AUTO"
            duration = _duration(container, stream)
            if duration > max_seconds:
                raise TooLarge("video_too_long", f"video lasts {duration:.1f} s; the limit is {max_seconds:g} s")
            check_size(stream.codec_context.width, stream.codec_context.height, limits)
            targets = _sample_times(duration, max_frames, fps)
            return _pick_frames(container, stream, targets, limits)
    except (UnsupportedMedia, TooLarge, BadInput):
        raise
    except ImageError as exc:
        raise TooLarge("too_large", str(exc)) from None
    except av.error.DecoderNotFoundError as exc:
        raise UnsupportedMedia("unsupported_codec", f"no decoder for this video codec: {exc}") from None
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise BadInput("corrupt_video", f"cannot decode the video: {exc}") from None


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _pick_frames(container, stream, targets: list[float], limits: ImageLimits) -> list[tuple[int, float, np.ndarray]]:
    """Decode sequentially and keep the first frame at or after each target time."""
    picked: list[tuple[int, float, np.ndarray]] = []
    next_target = 0
    for index, frame in enumerate(container.decode(stream)):
        if next_target >= len(targets):
            break
        time_s = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
        if time_s + 1e-6 < targets[next_target]:
            continue
        check_size(frame.width, frame.height, limits)
        picked.append((index, round(time_s, 3), frame.to_ndarray(format="rgb24")))
        while next_target < len(targets) and targets[next_target] <= time_s + 1e-6:
            next_target += 1
    if not picked:
        raise BadInput("corrupt_video", "no decodable frame in the video")
    return picked
