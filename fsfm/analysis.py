"""The analysis steps around the model, free of the service: crop and normalise the detected faces
(``prepare_faces``), attach scores and labels to them (``judge``), and decide (``verdict``).

Faces that are not judged stay in the answer with a reason: ``face_too_small`` (under the model's
``min_face_size``) and ``face_limit`` (beyond a request's face cap, ``LargestFaces``: the largest
faces of a request are judged, across all its frames).

The service's pipeline (``service/core/pipeline.py``, behind ``fsfm serve`` and ``fsfm analyze``) runs
them with detection before and its inference backend in between; ``fsfm bench pipeline`` times them.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from fsfm.evidence import FaceEvidence
from fsfm.face.crop import crop_face, normalize
from fsfm.face.types import DetectedFace
from fsfm.package.manifest import Manifest
from fsfm.scoring import attack_scores, label_for

FACE_TOO_SMALL = "face_too_small"
FACE_LIMIT = "face_limit"


@dataclass
class PreparedFace:
    """A detected face and, when it is judged, its normalised model input (3, S, S)."""

    face: DetectedFace
    tensor: np.ndarray | None
    skip_reason: str | None = None


@dataclass
class FaceResult:
    face: DetectedFace
    score: float | None = None
    label: str | None = None
    threshold: float | None = None
    skip_reason: str | None = None
    track_id: int | None = None  # a video's or stream's judged face: its track (``fsfm/tracking.py``)
    evidence: FaceEvidence | None = None  # only when a request asks for it (``fsfm/evidence.py``)

    def to_json(self) -> dict:
        out: dict = {
            "box": [round(float(v), 1) for v in self.face.box],
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.face.landmarks],
            "detection_score": round(float(self.face.score), 4),
        }
        if self.skip_reason is None and self.score is not None:
            out.update(score=round(self.score, 6), label=self.label, threshold=self.threshold)
        elif self.skip_reason is not None:
            out.update(judged=False, reason=self.skip_reason)
        if self.evidence is not None:
            out["evidence"] = self.evidence.to_json()
        return out


@dataclass
class Verdict:
    """The most suspicious judged face decides (of a video or stream: the most suspicious track,
    ``track_id``); no judged face gives no label, with a reason."""

    label: str | None
    score: float | None
    reason: str | None = None
    track_id: int | None = None

    def to_json(self) -> dict:
        out: dict = {"label": self.label, "score": None if self.score is None else round(self.score, 6)}
        if self.reason:
            out["reason"] = self.reason
        return out


class LargestFaces:
    """The ``limit`` largest faces (box area) offered so far, over any number of ``prepare_faces`` calls
    (a request's frames): only those keep their tensors. A face that does not make it, or is pushed
    out by a larger one later, loses its tensor and is marked ``face_limit``; of equal faces the
    first offered stays. Holds at most ``limit`` tensors, whatever the number of faces offered."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        self.limit = limit
        self._kept: list[tuple[float, int, PreparedFace]] = []  # min-heap of (area, -order, face)
        self._offered = 0

    def admits(self, face: DetectedFace) -> bool:
        """Whether ``face`` would be kept now (so that the caller crops only faces that are)."""
        return len(self._kept) < self.limit or face.width * face.height > self._kept[0][0]

    def keep(self, prepared: PreparedFace) -> None:
        """Keep ``prepared`` (which ``admits``), marking the face it pushes out, if any."""
        self._offered += 1
        entry = (prepared.face.width * prepared.face.height, -self._offered, prepared)
        if len(self._kept) < self.limit:
            heapq.heappush(self._kept, entry)
            return
        pushed_out = heapq.heapreplace(self._kept, entry)[2]
        pushed_out.tensor, pushed_out.skip_reason = None, FACE_LIMIT


def prepare_faces(
    image: np.ndarray, faces: list[DetectedFace], manifest: Manifest, largest: LargestFaces | None = None
) -> list[PreparedFace]:
    """Crop and normalise each face with the model's own crop convention; too-small faces, and with
    ``largest`` the faces beyond its limit, are kept in the answer but not judged."""
    prepared: list[PreparedFace] = []
    for face in faces:
        if min(face.width, face.height) < manifest.crop.min_face_size:
            prepared.append(PreparedFace(face, None, FACE_TOO_SMALL))
        elif largest is not None and not largest.admits(face):
            prepared.append(PreparedFace(face, None, FACE_LIMIT))
        else:
            crop = crop_face(image, face.box, manifest.crop)
            prepared.append(PreparedFace(face, normalize(crop, manifest.normalization)))
            if largest is not None:
                largest.keep(prepared[-1])
    return prepared


def judge(prepared: list[PreparedFace], logits: np.ndarray, manifest: Manifest, threshold: float) -> list[FaceResult]:
    """Attach scores to the judged faces. ``logits`` has one row per face with a tensor, in order."""
    judged = [p for p in prepared if p.tensor is not None]
    if len(judged) != len(logits):
        raise ValueError(f"{len(logits)} logit rows for {len(judged)} judged faces")
    scores = iter(attack_scores(logits, manifest).tolist() if len(logits) else [])
    results: list[FaceResult] = []
    for p in prepared:
        if p.tensor is None:
            results.append(FaceResult(p.face, skip_reason=p.skip_reason))
            continue
        score = next(scores)
        results.append(FaceResult(p.face, score, label_for(score, threshold, manifest), threshold))
    return results


def verdict(results: list[FaceResult], manifest: Manifest, threshold: float) -> Verdict:
    scored = [r.score for r in results if r.score is not None]
    if not scored:
        return Verdict(None, None, "no_face" if not results else "no_judged_face")
    worst = max(scored)
    return Verdict(label_for(worst, threshold, manifest), worst)
