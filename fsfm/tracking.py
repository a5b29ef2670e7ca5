"""Face tracks: the judged faces of a video's sampled frames (or of a stream's frames), linked into one
track per person, each with its score, its frames and its suspicious segments. Numpy only, beside
``fsfm/analysis.py``; the service's core keeps one ``Tracker`` per stream (``service/core/report.py``).

Contract (docs/api.md, "Tracks"):

- Association (``associate``): each frame's faces are matched to the live tracks' predicted faces
  (the last box and landmarks moved on at the track's last velocity). Cost = (1 - IoU) + landmark
  shift, the shift being the mean distance of the 5 landmarks in face sizes (the square root of the
  predicted box's area). A pair is admissible only within both gates, ``MIN_IOU`` and
  ``MAX_LANDMARK_SHIFT``; admissible pairs are taken greedily, cheapest first, each track and face at
  most once. A face left unmatched starts a new track (ids 1, 2, 3, ... per tracker).
- Lifetime: a track that has missed ``MAX_MISSED_FRAMES`` consecutive frames ends; a gap of fewer
  frames (a face the detector lost for a moment, or too small to judge) is bridged.
- Track score: the mean of its frame scores (FSFM's video score, arXiv 2412.12032, per person).
- Smoothed score: the mean of the track's last ``SMOOTHING_WINDOW_FRAMES`` frame scores, this one
  included, from its ``SMOOTHING_WINDOW_FRAMES``-th frame on (before that it has none: one odd first
  frame cannot open a segment). A track's peak is its highest smoothed score (the mean of all its
  scores while it has fewer frames than the window).
- Segments: maximal runs of a track's frames whose smoothed score is at least the threshold; each with
  its first and last frame and the highest frame score in it. The window trails, so segments are final
  when a frame arrives: a stream's "segments so far" never change in the past.
- Label: a track is labelled by its peak, so it is flagged (the attack label) exactly when it has a
  segment: a person manipulated for part of a video is flagged though the mean over the whole video
  (the track score) stays below the threshold.
- Verdict (``most_suspicious``): the track with the highest peak decides, with its peak as the score,
  among the tracks with at least ``MIN_VERDICT_FRAMES`` frames (all tracks, when none has that many).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fsfm.face.boxes import box_areas, pairwise_overlaps

MIN_IOU = 0.1  # a face must overlap its track's predicted box at least this much: no jumps across the frame
MAX_LANDMARK_SHIFT = 1.0  # face sizes: a face moves less than its own size between frames (after prediction)
MAX_MISSED_FRAMES = 5  # consecutive frames without its face end a track; shorter losses (blur, a turned head) bridge
SMOOTHING_WINDOW_FRAMES = 3  # frames averaged into the smoothed score: one outlier frame cannot open a segment
MIN_VERDICT_FRAMES = 3  # shorter tracks (a detector's false positive, a face passing by) cannot decide alone
MAX_SEGMENTS_KEPT = 100  # a stream's track keeps its latest segments only: bounded memory on endless streams


@dataclass(frozen=True)
class Detection:
    """One judged face offered to the tracker: box (4,) ``[x1, y1, x2, y2]``, landmarks (5, 2), score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float


@dataclass(frozen=True)
class TrackFrame:
    """A track's face in one frame."""

    index: int
    time_s: float
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class Segment:
    """A maximal run of a track's frames whose smoothed score is at least the threshold."""

    start_index: int
    end_index: int
    start_s: float
    end_s: float
    peak_score: float  # the highest frame score in the run


@dataclass(frozen=True)
class TrackSummary:
    """A track as reported: ``frames`` is empty unless its tracker keeps frames."""

    track_id: int
    frame_count: int
    score: float
    peak_score: float  # the highest smoothed score: the track's label is this one's
    label: str
    segments: tuple[Segment, ...]
    frames: tuple[TrackFrame, ...]


def associate(
    track_boxes: np.ndarray, track_landmarks: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray
) -> list[tuple[int, int]]:
    """(track, face) pairs: tracks' predicted boxes (T, 4) and landmarks (T, 5, 2) against a frame's
    faces (F, 4) and (F, 5, 2); greedy on (1 - IoU) + landmark shift within the gates, cheapest first."""
    if len(track_boxes) == 0 or len(boxes) == 0:
        return []
    iou = pairwise_overlaps(track_boxes, boxes)  # (T, F)
    size = np.sqrt(np.maximum(box_areas(track_boxes), 1.0))[:, None]  # (T, 1) face sizes in pixels
    shift = np.linalg.norm(track_landmarks[:, None] - landmarks[None], axis=-1).mean(axis=-1) / size  # (T, F)
    cost = (1.0 - iou) + shift
    admissible = (iou >= MIN_IOU) & (shift <= MAX_LANDMARK_SHIFT)
    pairs: list[tuple[int, int]] = []
    used_tracks: set[int] = set()
    used_faces: set[int] = set()
    for flat in np.argsort(np.where(admissible, cost, np.inf), axis=None, kind="stable"):
        track, face = divmod(int(flat), cost.shape[1])
        if not admissible[track, face]:
            break  # the rest are inadmissible too (sorted as infinite)
        if track not in used_tracks and face not in used_faces:
            pairs.append((track, face))
            used_tracks.add(track)
            used_faces.add(face)
    return pairs


class SegmentFinder:
    """The segments of one track's frame scores, fed in order (``add``); ``segments()`` so far."""

    def __init__(self, threshold: float, max_kept: int | None = None) -> None:
        self.threshold = threshold
        self._recent: deque[float] = deque(maxlen=SMOOTHING_WINDOW_FRAMES)
        self._closed: deque[Segment] = deque(maxlen=max_kept)
        self._open: Segment | None = None  # the run the last frame belongs to, if any
        self.peak: float | None = None  # the highest smoothed score so far; None before a full window

    def add(self, index: int, time_s: float, score: float) -> None:
        self._recent.append(score)
        if len(self._recent) < SMOOTHING_WINDOW_FRAMES:
            return
        smoothed = sum(self._recent) / SMOOTHING_WINDOW_FRAMES
        self.peak = smoothed if self.peak is None else max(self.peak, smoothed)
        if smoothed < self.threshold:
            if self._open is not None:
                self._closed.append(self._open)
                self._open = None
        elif self._open is None:
            self._open = Segment(index, index, time_s, time_s, score)
        else:
            run = self._open
            self._open = Segment(run.start_index, index, run.start_s, time_s, max(run.peak_score, score))

    def segments(self) -> tuple[Segment, ...]:
        return (*self._closed, *([self._open] if self._open is not None else []))


class Track:
    """One person's faces: the running score, the segments, the motion for prediction, and (when kept)
    every frame."""

    def __init__(self, track_id: int, threshold: float, keep_frames: bool, max_segments: int | None) -> None:
        self.track_id = track_id
        self.frame_count = 0
        self.score_sum = 0.0
        self.last_step = 0
        self.segments = SegmentFinder(threshold, max_segments)
        self.frames: list[TrackFrame] | None = [] if keep_frames else None
        self._box = np.zeros(4)
        self._landmarks = np.zeros((5, 2))
        self._velocity = np.zeros(4)  # box change per frame, from the last two observations

    @property
    def score(self) -> float:
        return self.score_sum / self.frame_count

    @property
    def peak_score(self) -> float:
        return self.score if self.segments.peak is None else self.segments.peak

    def predict(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The box and landmarks expected at ``step``, moved on at the last velocity."""
        moved = self._velocity * (step - self.last_step)
        centre_shift = np.array([moved[0] + moved[2], moved[1] + moved[3]]) / 2
        return self._box + moved, self._landmarks + centre_shift

    def observe(self, step: int, index: int, time_s: float, detection: Detection) -> None:
        box = np.asarray(detection.box, np.float64)
        if self.frame_count:
            self._velocity = (box - self._box) / (step - self.last_step)
        self._box, self._landmarks = box, np.asarray(detection.landmarks, np.float64)
        self.last_step = step
        self.frame_count += 1
        self.score_sum += detection.score
        self.segments.add(index, time_s, detection.score)
        if self.frames is not None:
            x1, y1, x2, y2 = (round(float(v), 1) for v in box)
            self.frames.append(TrackFrame(index, time_s, (x1, y1, x2, y2), detection.score))

    def summary(self, label: Callable[[float], str]) -> TrackSummary:
        return TrackSummary(
            self.track_id,
            self.frame_count,
            self.score,
            self.peak_score,
            label(self.peak_score),
            self.segments.segments(),
            tuple(self.frames or ()),
        )


class Tracker:
    """Tracks over a sequence of frames, fed in order (``update``). ``keep_frames`` keeps every track's
    frames and its ended tracks (an uploaded video, bounded by its frames); without it (a stream) a
    track keeps its running score and latest ``MAX_SEGMENTS_KEPT`` segments, and ended tracks are
    dropped, so memory is bounded by the faces in view."""

    def __init__(self, threshold: float, keep_frames: bool = False) -> None:
        self.threshold = threshold
        self.keep_frames = keep_frames
        self.live: dict[int, Track] = {}
        self.ended: list[Track] = []
        self._step = 0
        self._next_id = 1

    def update(self, index: int, time_s: float, detections: Sequence[Detection]) -> list[int]:
        """Add one frame's judged faces; returns each one's track id, in order."""
        step, self._step = self._step, self._step + 1
        live = list(self.live.values())
        predicted = [track.predict(step) for track in live]
        pairs = associate(
            np.array([box for box, _ in predicted]).reshape(-1, 4),
            np.array([marks for _, marks in predicted]).reshape(-1, 5, 2),
            np.array([d.box for d in detections], np.float64).reshape(-1, 4),
            np.array([d.landmarks for d in detections], np.float64).reshape(-1, 5, 2),
        )
        matched = {face: live[track] for track, face in pairs}
        ids: list[int] = []
        for face, detection in enumerate(detections):
            track = matched.get(face) or self._start_track()
            track.observe(step, index, time_s, detection)
            ids.append(track.track_id)
        for track in live:
            if step - track.last_step >= MAX_MISSED_FRAMES:
                del self.live[track.track_id]
                if self.keep_frames:
                    self.ended.append(track)
        return ids

    def _start_track(self) -> Track:
        track = Track(self._next_id, self.threshold, self.keep_frames, None if self.keep_frames else MAX_SEGMENTS_KEPT)
        self._next_id += 1
        self.live[track.track_id] = track
        return track

    def summaries(self, label: Callable[[float], str]) -> list[TrackSummary]:
        """The live tracks, and the ended ones when kept, by id."""
        tracks = sorted([*self.ended, *self.live.values()], key=lambda track: track.track_id)
        return [track.summary(label) for track in tracks]


def peak_score(scores: Sequence[float]) -> float:
    """The highest smoothed score of a track's scores, in order (their mean when fewer than the window)."""
    values = np.asarray(scores, np.float64)
    if len(values) < SMOOTHING_WINDOW_FRAMES:
        return float(values.mean())
    window = np.full(SMOOTHING_WINDOW_FRAMES, 1.0 / SMOOTHING_WINDOW_FRAMES)
    return float(np.convolve(values, window, mode="valid").max())


def most_suspicious(scores: Mapping[int, Sequence[float]]) -> tuple[int, float] | None:
    """(track id, peak) of the track with the highest peak (``peak_score``) among those with at least
    ``MIN_VERDICT_FRAMES`` scores (among all when none has as many); of equal peaks the lower id.
    None without a track."""
    eligible = {tid: s for tid, s in scores.items() if len(s) >= MIN_VERDICT_FRAMES} or scores
    peaks = sorted((-peak_score(s), tid) for tid, s in eligible.items() if len(s))
    return (peaks[0][1], -peaks[0][0]) if peaks else None
