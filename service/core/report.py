"""What the core answers: per-frame face results, the verdict, and a stream's running aggregate.

The verdict of an image is its most suspicious judged face; of a video, the mean over the sampled
frames of each frame's most suspicious face (FSFM's video-level score, arXiv 2412.12032). A stream's
aggregate applies the video verdict to a window of its latest analysed frames, so an uploaded video
and a stream of the same frames agree. The doors translate these types into JSON or protobuf.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fsfm.analysis import FaceResult, Verdict, verdict
from fsfm.package.manifest import Manifest
from fsfm.scoring import label_for
from service.media import MediaKind

AGGREGATE_WINDOW_FRAMES = 30  # the analysed frames a stream's aggregate scores cover (docs/grpc.md)


@dataclass
class FrameReport:
    index: int
    time_s: float
    faces: list[FaceResult]


@dataclass(frozen=True)
class AggregateSnapshot:
    """A stream's aggregate after one of its frames: counts over the whole stream, scores over the
    window (``mean_score``/``max_score`` are None when the window has no judged face)."""

    frames_seen: int
    frames_failed: int
    faces_seen: int
    window_frames: int
    window_faces: int
    mean_score: float | None
    max_score: float | None
    verdict: Verdict


@dataclass
class Report:
    """One answered request: an image or stream frame (one frame) or a video (its sampled frames).
    ``aggregate`` is the stream's aggregate including this request (videos: over all their frames)."""

    request_id: str
    model: Manifest
    threshold: float
    threshold_source: str
    frames: list[FrameReport]
    verdict: Verdict
    timing_ms: dict[str, float] = field(default_factory=dict)
    is_video: bool = False
    aggregate: AggregateSnapshot | None = None
    audit: dict | None = None  # when the request asked for it: ``fsfm.evidence.audit_record``

    @property
    def media(self) -> MediaKind:
        return "video" if self.is_video else "image"


def overall_verdict(frames: list[FrameReport], manifest: Manifest, threshold: float, is_video: bool) -> Verdict:
    """Image: the most suspicious face. Video: the mean over frames of each frame's most
    suspicious face (FSFM's video score is the mean of frame scores)."""
    if not is_video:
        return verdict(frames[0].faces, manifest, threshold)
    per_frame = [verdict(f.faces, manifest, threshold) for f in frames]
    scores = [v.score for v in per_frame if v.score is not None]
    if not scores:
        any_face = any(f.faces for f in frames)
        return Verdict(None, None, "no_judged_face" if any_face else "no_face")
    mean = float(np.mean(scores))
    return Verdict(label_for(mean, threshold, manifest), mean)


class StreamAggregate:
    """The running aggregate of one stream: counts over the whole stream, scores over the window of
    its last ``window`` analysed frames. The verdict is the video verdict over the window."""

    def __init__(self, window: int = AGGREGATE_WINDOW_FRAMES) -> None:
        self.frames_seen = 0
        self.frames_failed = 0
        self.faces_seen = 0
        self._window: deque[FrameReport] = deque(maxlen=window)
        self._scale: tuple[Manifest, float] | None = None  # the stream's model and threshold

    def add(self, frame: FrameReport, model: Manifest, threshold: float) -> None:
        self.frames_seen += 1
        self.faces_seen += len(frame.faces)
        self._window.append(frame)
        self._scale = (model, threshold)

    def add_failure(self) -> None:
        self.frames_seen += 1
        self.frames_failed += 1

    def verdict(self) -> Verdict:
        if self._scale is None or not self._window:
            return Verdict(None, None, "no_face")
        manifest, threshold = self._scale
        return overall_verdict(list(self._window), manifest, threshold, is_video=True)

    def snapshot(self) -> AggregateSnapshot:
        scores = [face.score for frame in self._window for face in frame.faces if face.score is not None]
        return AggregateSnapshot(
            frames_seen=self.frames_seen,
            frames_failed=self.frames_failed,
            faces_seen=self.faces_seen,
            window_frames=len(self._window),
            window_faces=len(scores),
            mean_score=float(np.mean(scores)) if scores else None,
            max_score=max(scores) if scores else None,
            verdict=self.verdict(),
        )
