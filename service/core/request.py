"""What a door hands the core: ``AnalysisRequest`` = options + context + the media or the frames.

Both doors build one request per analysis (an uploaded image or video, a gRPC image, one frame of a
gRPC stream) and call ``AnalysisCore.analyze``; nothing else about a request reaches the core.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from service.core.admission import Reservation
from service.media import MEDIA_KINDS, Frame, MediaKind
from service.settings import VideoLimits

MAX_MODEL_NAME_CHARS = 200  # a request's model name, at most (both doors): far above any real ``name:version``


@dataclass(frozen=True)
class AnalysisOptions:
    """What a request may choose; both doors build one from their parameters. ``fps`` and
    ``max_frames`` apply to videos only (default and ceiling of ``max_frames``: the server's
    ``max_video_frames``). ``evidence``: the per-request evidence asked for, as a comma-separated
    string or its parts (``fsfm/evidence.py``; the core refuses unknown kinds)."""

    task: str
    model: str | None = None
    threshold: float | None = None
    target_fpr: float | None = None
    fps: float | None = None
    max_frames: int | None = None
    evidence: str | Collection[str] | None = None


ProgressCallback = Callable[[int, int], None]  # (frames done, frames planned), called from a preprocessing thread


@dataclass(frozen=True)
class RequestContext:
    """Where a request comes from and how long it may take.

    ``deadline`` is a ``time.monotonic()`` instant. ``stream_id`` (from ``AnalysisCore.open_stream``)
    and ``sequence`` (the frame's position in that stream: 0, 1, 2, ...) make the request one frame
    of a stream, whose running aggregate the core keeps and reports in order of ``sequence``;
    ``index`` and ``time_s`` are that frame's number and time as the client gives them (gRPC
    ``Frame.index``, ``Frame.time_s``): its frame report and the stream's track segments carry them.
    ``progress``, when given, is told after each frame is detected and cropped (an asynchronous job
    reports it); it runs on a preprocessing thread, so it must only record.
    """

    transport: str
    deadline: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream_id: str | None = None
    sequence: int = 0
    index: int = 0
    time_s: float = 0.0
    progress: ProgressCallback | None = None


@dataclass(frozen=True)
class AnalysisRequest:
    """Either ``media`` (encoded bytes, sniffed and decoded by the core; ``accept`` says which kinds
    the door allows) or ``frames`` (already decoded RGB pixels, e.g. gRPC raw images). A door that
    held the request's place before reading it passes the ``reservation`` on. ``video_limits``
    replaces the server's synchronous limits (an asynchronous job's own)."""

    options: AnalysisOptions
    context: RequestContext
    media: bytes | None = None
    frames: list[Frame] | None = None
    accept: Collection[MediaKind] = MEDIA_KINDS
    reservation: Reservation | None = None  # its place in admission's line, held by the door (``reserve``)
    video_limits: VideoLimits | None = None

    def __post_init__(self) -> None:
        if (self.media is None) == (self.frames is None):
            raise ValueError("an AnalysisRequest carries either media or frames")
