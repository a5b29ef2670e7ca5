"""Face tracks (``fsfm/tracking.py``): association of crossing faces, faces leaving and entering, missed
frames, the segments of a track's scores, and the verdict among tracks."""

from __future__ import annotations

import numpy as np
import pytest

from fsfm.tracking import (
    MAX_MISSED_FRAMES,
    MIN_VERDICT_FRAMES,
    Detection,
    Segment,
    SegmentFinder,
    Tracker,
    associate,
    most_suspicious,
)

# The 5 landmarks of a frontal face, as fractions of its box (eyes, nose tip, mouth corners).
LANDMARKS_IN_BOX = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]])


def face(x: float, y: float, size: float = 100.0, score: float = 0.1) -> Detection:
    """A face whose box's top-left corner is (x, y)."""
    box = np.array([x, y, x + size, y + size])
    return Detection(box, np.array([x, y]) + LANDMARKS_IN_BOX * size, score)


def label(score: float) -> str:
    return "fake" if score >= 0.5 else "real"


def test_association_takes_the_cheapest_admissible_pairs_within_the_gates() -> None:
    tracks = [face(0, 0), face(300, 0)]
    faces = [face(310, 5), face(1000, 1000), face(20, 0)]

    def stack(detections: list[Detection]) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([d.box for d in detections]), np.stack([d.landmarks for d in detections])

    assert sorted(associate(*stack(tracks), *stack(faces))) == [(0, 2), (1, 0)]  # the far face matches nothing
    assert associate(*stack(tracks), np.zeros((0, 4)), np.zeros((0, 5, 2))) == []
    # Overlapping boxes whose landmarks moved more than a face size (a box grown around another face): no match.
    grown = Detection(np.array([0.0, 0.0, 100.0, 100.0]), LANDMARKS_IN_BOX * 100 + 150, 0.1)
    assert associate(*stack(tracks[:1]), *stack([grown])) == []


def test_crossing_faces_keep_their_tracks() -> None:
    """Two faces pass each other (one moving right, one left, boxes overlapping as they cross)."""
    tracker = Tracker(threshold=0.5)
    steps = 12
    for step in range(steps):
        right, left = face(20 * step, 0), face(220 - 20 * step, 50)
        ids = tracker.update(step, step / 10, [left, right] if step % 2 else [right, left])
        assert (ids if step % 2 == 0 else ids[::-1]) == [1, 2], step
    assert sorted(tracker.live) == [1, 2]


def test_a_face_leaving_ends_its_track_and_a_new_face_gets_a_new_one() -> None:
    tracker = Tracker(threshold=0.5, keep_frames=True)
    for step in range(4):
        assert tracker.update(step, step, [face(10 * step, 0)]) == [1]
    # The first person leaves; another enters at the other side of the frame.
    for step in range(4, 4 + MAX_MISSED_FRAMES + 2):
        assert tracker.update(step, step, [face(400, 200)]) == [2]
    assert list(tracker.live) == [2] and [track.track_id for track in tracker.ended] == [1]
    # A third person where the first one was, long after it ended: a new track, not the old one.
    assert tracker.update(20, 20, [face(30, 0)]) == [3]
    summaries = tracker.summaries(label)
    assert [(s.track_id, s.frame_count) for s in summaries] == [(1, 4), (2, MAX_MISSED_FRAMES + 2), (3, 1)]
    assert [f.index for f in summaries[0].frames] == [0, 1, 2, 3]
    assert summaries[0].frames[1].box == (10.0, 0.0, 110.0, 100.0)


@pytest.mark.parametrize(("gap", "same_track"), [(1, True), (MAX_MISSED_FRAMES - 1, True), (MAX_MISSED_FRAMES, False)])
def test_missed_frames_are_bridged_until_the_track_ends(gap: int, same_track: bool) -> None:
    """A face lost for ``gap`` frames while moving steadily: found again at its predicted place."""
    tracker = Tracker(threshold=0.5)
    for step in range(3):
        tracker.update(step, step, [face(15 * step, 0)])
    for step in range(3, 3 + gap):
        assert tracker.update(step, step, []) == []
    back = 3 + gap
    assert tracker.update(back, back, [face(15 * back, 0)]) == ([1] if same_track else [2])


def test_a_stream_tracker_keeps_neither_frames_nor_ended_tracks() -> None:
    tracker = Tracker(threshold=0.5)
    for step in range(3):
        tracker.update(step, step, [face(0, 0, score=0.2 * step)])
    for step in range(3, 3 + MAX_MISSED_FRAMES):
        tracker.update(step, step, [])
    assert tracker.live == {} and tracker.ended == [] and tracker.summaries(label) == []


def test_segments_are_runs_of_the_smoothed_score_at_or_above_the_threshold() -> None:
    finder = SegmentFinder(threshold=0.5)
    scores = [0.1, 0.1, 0.9, 0.1, 0.1] + [0.1, 0.9, 0.9, 0.95, 0.9, 0.1, 0.1, 0.1] + [0.8] * 3
    for i, score in enumerate(scores):
        finder.add(100 + i, i / 10, score)
    # A single high frame between low ones never reaches the threshold (mean of 3: 0.37); the run of
    # high frames from 106 opens at 107 (mean 0.63) and closes after 110 (110: mean 0.65, 111: 0.37).
    # The last run is still open: a segment so far, ending at the last frame.
    assert finder.segments() == (
        Segment(107, 110, 0.7, 1.0, 0.95),
        Segment(114, 115, 1.4, 1.5, 0.8),
    )
    assert SegmentFinder(threshold=0.5).segments() == ()
    # The smoothed score starts with the track's third frame: one odd first frame opens nothing.
    odd_start = SegmentFinder(threshold=0.5)
    for i, score in enumerate([0.95, 0.1, 0.1, 0.1]):
        odd_start.add(i, i, score)
    assert odd_start.segments() == () and odd_start.peak == pytest.approx(0.383, abs=1e-3)


def test_the_track_score_is_the_mean_of_its_frames_and_labels_by_threshold() -> None:
    tracker = Tracker(threshold=0.5, keep_frames=True)
    for step, score in enumerate([0.2, 0.9, 0.9, 0.9]):
        tracker.update(step, step, [face(0, 0, score=score)])
    (summary,) = tracker.summaries(label)
    assert summary.score == pytest.approx(0.725) and summary.label == "fake"
    assert summary.peak_score == pytest.approx(0.9)
    assert summary.segments == (Segment(2, 3, 2.0, 3.0, 0.9),)


def test_a_person_manipulated_for_part_of_the_video_is_flagged_though_their_mean_is_low() -> None:
    """The label follows the peak of the smoothed score (a segment), not the mean over the video."""
    tracker = Tracker(threshold=0.5, keep_frames=True)
    for step, score in enumerate([0.1] * 10 + [0.9] * 4 + [0.1] * 10):
        tracker.update(step, step, [face(0, 0, score=score)])
    (summary,) = tracker.summaries(label)
    assert summary.score == pytest.approx(0.233, abs=1e-3) and summary.peak_score == pytest.approx(0.9)
    assert summary.label == "fake" and [(s.start_index, s.end_index) for s in summary.segments] == [(11, 14)]
    partly_fake, mildly_odd = [0.1] * 10 + [0.9] * 4 + [0.1] * 10, [0.4] * 24
    assert most_suspicious({1: mildly_odd, 2: partly_fake}) == (2, pytest.approx(0.9))


def test_the_verdict_is_the_most_suspicious_track_long_enough_to_decide() -> None:
    long_real, long_fake, short_fake = [0.1] * 10, [0.2, 0.9, 0.9, 0.8], [0.99] * (MIN_VERDICT_FRAMES - 1)
    # The long fake track's peak: the mean of its last three scores, 0.867.
    assert most_suspicious({1: long_real, 2: long_fake, 3: short_fake}) == (2, pytest.approx(2.6 / 3))
    # Not the mean over everyone: one fake person among many real ones still decides.
    crowd = {i: [0.05] * 10 for i in range(1, 10)} | {10: [0.9] * 10}
    assert most_suspicious(crowd) == (10, pytest.approx(0.9))
    # No track is long enough: every track counts; equal means: the lower id.
    assert most_suspicious({4: [0.3], 3: [0.3], 5: [0.1]}) == (3, pytest.approx(0.3))
    assert most_suspicious({}) is None
