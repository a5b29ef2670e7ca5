"""What the core answers: per-frame face results, the verdict, a video's tracks, and a stream's running
aggregate.

The verdict of an image is its most suspicious judged face. Faces of a video (or of a stream) are
linked into tracks, one per person (``fsfm/tracking.py``, docs/api.md "Tracks"); the verdict of a video
is its most suspicious track: per track, the mean of its face scores (FSFM's video-level score, arXiv
2412.12032, per person), the highest deciding (tracks shorter than ``MIN_VERDICT_FRAMES`` only when no
track is longer). A stream's aggregate applies the same verdict to a window of its latest analysed
frames (per track, the mean of its faces in the window), so an uploaded video (one window over all its
frames) and a stream of the same frames agree. The doors translate these types into JSON or protobuf.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fsfm.analysis import FaceResult, Verdict
from fsfm.package.manifest import Manifest
from fsfm.scoring import label_for
from fsfm.tracking import Detection, Tracker, TrackSummary, most_suspicious
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
    tracks: tuple[TrackSummary, ...] = ()  # a stream's live tracks; an uploaded video's every track, with frames


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
    tracks: tuple[TrackSummary, ...] | None = None  # videos: every track, with its frames
    audit: dict | None = None  # when the request asked for it: ``fsfm.evidence.audit_record``

    @property
    def media(self) -> MediaKind:
        return "video" if self.is_video else "image"


def tracks_verdict(frames: Iterable[FrameReport], manifest: Manifest, threshold: float) -> Verdict:
    """The most suspicious track of these frames (their judged faces carry track ids): per track, the
    mean of its face scores here (``fsfm.tracking.most_suspicious``)."""
    scores: dict[int, list[float]] = {}
    any_face = False
    for frame in frames:
        any_face = any_face or bool(frame.faces)
        for face in frame.faces:
            if face.score is not None and face.track_id is not None:
                scores.setdefault(face.track_id, []).append(face.score)
    if (chosen := most_suspicious(scores)) is None:
        return Verdict(None, None, "no_judged_face" if any_face else "no_face")
    track_id, score = chosen
    return Verdict(label_for(score, threshold, manifest), score, track_id=track_id)


class StreamAggregate:
    """The running aggregate of one stream: counts over the whole stream, its tracks, and scores over
    the window of its last ``window`` analysed frames. The verdict is the video verdict over the window.
    ``keep_tracks`` (an uploaded video) keeps every track's frames and the ended tracks."""

    def __init__(self, window: int = AGGREGATE_WINDOW_FRAMES, keep_tracks: bool = False) -> None:
        self.frames_seen = 0
        self.frames_failed = 0
        self.faces_seen = 0
        self.keep_tracks = keep_tracks
        self._window: deque[FrameReport] = deque(maxlen=window)
        self._scale: tuple[Manifest, float] | None = None  # the stream's model and threshold
        self._tracker: Tracker | None = None  # made with the stream's threshold, at its first analysed frame

    def add(self, frame: FrameReport, model: Manifest, threshold: float) -> None:
        """Count the frame, link its judged faces to their tracks (setting their ``track_id``), window it."""
        self.frames_seen += 1
        self.faces_seen += len(frame.faces)
        self._window.append(frame)
        self._scale = (model, threshold)
        if self._tracker is None:
            self._tracker = Tracker(threshold, keep_frames=self.keep_tracks)
        judged = [(face, face.score) for face in frame.faces if face.score is not None]
        detections = [Detection(face.face.box, face.face.landmarks, score) for face, score in judged]
        track_ids = self._tracker.update(frame.index, frame.time_s, detections)
        for (face, _), track_id in zip(judged, track_ids, strict=True):
            face.track_id = track_id

    def add_failure(self) -> None:
        self.frames_seen += 1
        self.frames_failed += 1

    def verdict(self) -> Verdict:
        if self._scale is None or not self._window:
            return Verdict(None, None, "no_face")
        manifest, threshold = self._scale
        return tracks_verdict(self._window, manifest, threshold)

    def tracks(self) -> tuple[TrackSummary, ...]:
        if self._scale is None or self._tracker is None:
            return ()
        manifest, threshold = self._scale
        return tuple(self._tracker.summaries(partial(label_for, threshold=threshold, manifest=manifest)))

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
            tracks=self.tracks(),
        )
