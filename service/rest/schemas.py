"""The REST API's documents (pydantic models, for validation and the OpenAPI document) and the one
translation of a core ``Report`` into ``AnalysisResponse`` JSON. Field meanings: docs/api.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fsfm.analysis import FaceResult
from fsfm.evidence import EVIDENCE_KINDS, OCCLUSION_METHOD, PROBES
from fsfm.package.manifest import TASKS, Manifest, Thresholds
from fsfm.tracking import TrackSummary
from service.core import FrameReport, Report
from service.core.request import MAX_MODEL_NAME_CHARS
from service.media import MAX_SAMPLING_FPS
from service.readiness import NotReadyReason


class AnalysisParams(BaseModel):
    """What a request may choose. Each may be a query parameter or a form field, not both."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME_CHARS,
        description="model as `name` or `name:version` (default: the task's model)",
        examples=["tiny-deepfake:1"],
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="attack-score threshold (default: the manifest's default)"
    )
    target_fpr: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="use the manifest's operating point calibrated for this false-positive rate",
    )
    fps: float | None = Field(
        default=None, gt=0.0, le=MAX_SAMPLING_FPS, description="video only: frames sampled per second"
    )
    max_frames: int | None = Field(
        default=None,
        ge=1,
        description="video only: frames analysed, at most (default and ceiling: the server's max_video_frames)",
    )
    evidence: str | None = Field(
        default=None,
        max_length=100,
        description=f"comma-separated subset of {', '.join(EVIDENCE_KINDS)}: per-face heatmap and robustness probe, "
        "and the response's audit record (docs/api.md, Evidence); none by default, and then nothing extra is computed",
        examples=["heatmap,robustness,audit"],
    )


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    task: Literal[TASKS]  # type: ignore[valid-type]  (the task names, from their one definition)
    demo: bool = Field(description="a demo model: not fit for decisions")
    notice: str | None = Field(
        default=None, description="demo models only: what the model is and how poorly it generalises (its description)"
    )


class HeatmapOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal[OCCLUSION_METHOD] = Field(  # type: ignore[valid-type]
        description="occlusion: each grid cell greyed in turn and the face re-scored (docs/api.md, Evidence)"
    )
    grid: list[list[float]] = Field(description="rows x cols: |score - score with the cell greyed|, 0..1")
    png: str = Field(description="base64 PNG of the grid upsampled to the crop's side, colour-mapped (JET)")
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2]: the crop's square in image pixels, where the PNG goes",
    )


class RobustnessOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probes: dict[str, float] = Field(description=f"attack score of each probe: {', '.join(PROBES)}")
    fragile: bool = Field(description="true when some probe's label differs from the face's")


class FaceEvidenceOut(BaseModel):
    """The evidence a request asked for, on each of its most suspicious judged faces (``max_evidence_faces``)."""

    model_config = ConfigDict(extra="forbid")

    heatmap: HeatmapOut | None = None
    robustness: RobustnessOut | None = None


class AuditModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int
    package_sha256: str = Field(description="SHA-256 of the package's manifest.json, which pins every graph file")
    onnx_sha256: str = Field(description="SHA-256 of the package's reference ONNX graph")


class AuditOut(BaseModel):
    """What traces the decision without keeping the media."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    input_sha256: str = Field(description="SHA-256 of the uploaded file's bytes")
    model: AuditModel
    thresholds: Thresholds = Field(description="the model's default threshold and operating points")
    threshold: float = Field(description="the threshold applied")
    threshold_source: str
    engine: dict[str, str] | None = Field(
        description="engine, precision and graph file (null on an API node with a Redis queue: its workers run it)"
    )
    code_version: str = Field(description="fsfm <version>+g<commit> (a checkout) or +wheel (installed)")
    created_at: str = Field(description="ISO 8601, UTC")


class FaceOut(BaseModel):
    """One detected face. Judged faces carry ``score``, ``label`` and ``threshold``; faces that were
    not judged carry ``judged: false`` and a ``reason`` instead (e.g. ``face_too_small``)."""

    model_config = ConfigDict(extra="forbid")

    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels")
    landmarks: list[list[float]] = Field(
        min_length=5, max_length=5, description="[x, y] of left eye, right eye, nose tip, left and right mouth corner"
    )
    detection_score: float
    score: float | None = Field(default=None, description="probability of the attack class (fake / spoof)")
    label: str | None = None
    threshold: float | None = None
    judged: bool | None = Field(default=None, description="false when the face was not judged")
    reason: str | None = Field(default=None, description="why the face was not judged")
    track_id: int | None = Field(
        default=None, description="videos: the track (person) of a judged face (`tracks`); null when not judged"
    )
    evidence: FaceEvidenceOut | None = Field(default=None, description="only when the request asked for evidence")


class VerdictOut(BaseModel):
    """Image: the most suspicious judged face. Video: the most suspicious track (``track_id``): the
    highest track peak (its highest smoothed score, ``TrackOut.peak_score``), among the tracks with at
    least 3 judged faces (among all when none has as many); docs/api.md, "Tracks". No judged face:
    ``label`` and ``score`` are null and ``reason`` says why."""

    model_config = ConfigDict(extra="forbid")

    label: str | None
    score: float | None
    reason: str | None = Field(default=None, description="no_face | no_judged_face")
    track_id: int | None = Field(default=None, description="videos: the track that decides; absent for images")


class TrackFrameOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="frame number in the video")
    time_s: float
    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels")
    score: float


class SegmentOut(BaseModel):
    """A maximal run of a track's frames whose smoothed score (mean of its last 3 face scores) is at or
    above the threshold."""

    model_config = ConfigDict(extra="forbid")

    start_s: float
    end_s: float
    start_index: int = Field(description="first frame of the run")
    end_index: int = Field(description="last frame of the run")
    peak_score: float = Field(description="the highest face score in the run")


class TrackOut(BaseModel):
    """One person's faces across the sampled frames (docs/api.md, "Tracks")."""

    model_config = ConfigDict(extra="forbid")

    track_id: int = Field(description="1, 2, 3, ... in order of first appearance")
    score: float = Field(description="the mean of the track's face scores (FSFM's video score, per person)")
    peak_score: float = Field(
        description="its highest smoothed score (mean of 3 consecutive face scores; the mean of all below 3)"
    )
    label: str = Field(description="peak_score against the response's threshold: the attack label iff it has a segment")
    frames: list[TrackFrameOut] = Field(description="its judged faces, in video order")
    segments: list[SegmentOut] = Field(description="where its smoothed score stays at or above the threshold")


class FrameOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="frame number in the video")
    time_s: float
    faces: list[FaceOut]


_FACE_EXAMPLE = {
    "box": [184.2, 71.9, 272.5, 185.3],
    "landmarks": [[203.1, 101.4], [247.2, 102.8], [224.0, 126.5], [204.9, 141.0], [243.6, 141.7]],
    "detection_score": 0.9998,
    "score": 0.031264,
    "label": "real",
    "threshold": 0.5,
}
_EVIDENCE_EXAMPLE = {
    "heatmap": {
        "method": "occlusion",
        "grid": [[0.01, 0.02, 0.0], [0.03, 0.21, 0.04], [0.0, 0.05, 0.01]],  # 7 x 7 in answers; shortened
        "png": "iVBORw0KGgoAAAANSUhEUgAAAOAAAADgCAIAAACVT/22...",
        "box": [163.0, 55.0, 293.0, 185.0],
    },
    "robustness": {"probes": {"jpeg_q50": 0.041, "downscale_0.5": 0.62}, "fragile": True},
}
_AUDIT_EXAMPLE = {
    "request_id": "4f1c2a9e7b3d4e5f8a6b7c8d9e0f1a2b",
    "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "model": {
        "name": "fsfm-dfd",
        "version": 1,
        "package_sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "onnx_sha256": "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
    },
    "thresholds": {"default": 0.5, "operating_points": []},
    "threshold": 0.5,
    "threshold_source": "default",
    "engine": {"engine": "onnxruntime", "precision": "fp32", "file": "model.onnx"},
    "code_version": "fsfm 0.1.0+g1a2b3c4d5e6f",
    "created_at": "2026-12-03T15:04:05.123+00:00",
}
_IMAGE_EXAMPLE = {
    "request_id": "4f1c2a9e7b3d4e5f8a6b7c8d9e0f1a2b",
    "model": {"name": "fsfm-dfd", "version": 1, "task": "deepfake", "demo": False},
    "media": "image",
    "threshold": 0.5,
    "threshold_source": "default",
    "faces": [
        _FACE_EXAMPLE,
        {
            **{k: _FACE_EXAMPLE[k] for k in ("box", "landmarks")},
            "detection_score": 0.97,
            "judged": False,
            "reason": "face_too_small",
        },
    ],
    "verdict": {"label": "real", "score": 0.031264},
    "timing_ms": {"decode": 3.1, "detect": 41.7, "queue": 4.9, "infer": 62.3, "total": 113.5},
}
_VIDEO_EXAMPLE = {
    **{k: v for k, v in _IMAGE_EXAMPLE.items() if k not in ("faces", "media", "verdict")},
    "media": "video",
    "frames": [
        {"index": 0, "time_s": 0.0, "faces": [{**_FACE_EXAMPLE, "track_id": 1}]},
        {"index": 12, "time_s": 0.5, "faces": [{**_FACE_EXAMPLE, "score": 0.912, "label": "fake", "track_id": 1}]},
        {"index": 24, "time_s": 1.0, "faces": [{**_FACE_EXAMPLE, "score": 0.957, "label": "fake", "track_id": 1}]},
    ],
    "tracks": [
        {
            "track_id": 1,
            "score": 0.633421,
            "peak_score": 0.633421,
            "label": "fake",
            "frames": [
                {"index": 0, "time_s": 0.0, "box": [184.2, 71.9, 272.5, 185.3], "score": 0.031264},
                {"index": 12, "time_s": 0.5, "box": [184.2, 71.9, 272.5, 185.3], "score": 0.912},
                {"index": 24, "time_s": 1.0, "box": [184.2, 71.9, 272.5, 185.3], "score": 0.957},
            ],
            # The smoothed score (the mean of the last 3 face scores) reaches the threshold at frame 24.
            "segments": [{"start_s": 1.0, "end_s": 1.0, "start_index": 24, "end_index": 24, "peak_score": 0.957}],
        }
    ],
    "verdict": {"label": "fake", "score": 0.633421, "track_id": 1},
}
_EVIDENCE_RESPONSE_EXAMPLE = {  # evidence=heatmap,robustness,audit
    **{k: v for k, v in _IMAGE_EXAMPLE.items() if k not in ("faces", "timing_ms")},
    "faces": [{**_FACE_EXAMPLE, "evidence": _EVIDENCE_EXAMPLE}],
    "timing_ms": {**_IMAGE_EXAMPLE["timing_ms"], "evidence": 1650.2, "total": 1763.7},
    "audit": _AUDIT_EXAMPLE,
}


class AnalysisResponse(BaseModel):
    """An image's faces (``faces``) or a video's sampled frames (``frames``), and the verdict."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [_IMAGE_EXAMPLE, _VIDEO_EXAMPLE, _EVIDENCE_RESPONSE_EXAMPLE]}
    )

    request_id: str
    model: ModelRef
    media: Literal["image", "video"]
    threshold: float = Field(description="the attack-score threshold applied")
    threshold_source: str = Field(description='"default", "request", or the name of a manifest operating point')
    faces: list[FaceOut] | None = Field(default=None, description="images: every detected face")
    frames: list[FrameOut] | None = Field(default=None, description="videos: the sampled frames")
    tracks: list[TrackOut] | None = Field(
        default=None, description="videos: the judged faces linked into one track per person, by id"
    )
    verdict: VerdictOut
    timing_ms: dict[str, float] = Field(description="decode, detect, queue, infer, total; evidence when asked for")
    audit: AuditOut | None = Field(default=None, description="only when the request asked for evidence=audit")


class ErrorDetail(BaseModel):
    reason: str = Field(description="stable machine-readable code, e.g. corrupt, overloaded, model_not_found")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


class ModelEntry(BaseModel):
    ref: str = Field(description="name:version")
    default_for_task: bool = Field(description="requests for the task that name no model get this one")
    manifest: Manifest
    engine: dict[str, str] | None = Field(
        default=None,
        description="the engine, precision and graph file it runs on in this process (auto or forced; null on an "
        "API node with a Redis queue: its workers run the engines)",
    )


class ModelsResponse(BaseModel):
    models: list[ModelEntry]


class Readiness(BaseModel):
    """The readiness of an API node or a worker (one shape for both, docs/api.md)."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    reason: NotReadyReason | None = Field(
        description="why not ready (null when ready): still loading, draining, no model served, a backend down"
    )
    models_loaded: bool
    draining: bool
    models: list[str]
    queue: str = Field(description='"local" or "redis"')
    precision: str = Field(description="the precision asked for: auto (the default), or the one FSFM_PRECISION forces")
    engines: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per model: the engine, precision and graph file chosen in this process (API nodes with a Redis "
        "queue hold none: their workers report theirs)",
    )
    backend_errors: dict[str, str] | None = Field(default=None, description="per model (or queue): why it is down")


def report_json(report: Report) -> dict[str, Any]:
    """The response document (``AnalysisResponse``) of a core report."""
    body: dict[str, Any] = {
        "request_id": report.request_id,
        "model": report.model.reference(),
        "media": report.media,
        "threshold": report.threshold,
        "threshold_source": report.threshold_source,
    }
    body.update(faces_json(report.frames, report.is_video, tracked=report.is_video))
    body["verdict"] = report.verdict.to_json()
    if report.is_video:
        body["tracks"] = [track_json(track) for track in report.tracks or ()]
        body["verdict"]["track_id"] = report.verdict.track_id
    body["timing_ms"] = report.timing_ms
    if report.audit is not None:
        body["audit"] = report.audit
    return body


def faces_json(frames: list[FrameReport], is_video: bool, tracked: bool = False) -> dict[str, Any]:
    """An image's ``faces`` or a video's ``frames`` (``FrameOut``), as the response carries them;
    ``tracked``: each face with its ``track_id`` (an analysed video's)."""

    def face_json(face: FaceResult) -> dict[str, Any]:
        return {**face.to_json(), "track_id": face.track_id} if tracked else face.to_json()

    if is_video:
        return {
            "frames": [
                {"index": frame.index, "time_s": frame.time_s, "faces": [face_json(face) for face in frame.faces]}
                for frame in frames
            ]
        }
    return {"faces": [face_json(face) for face in frames[0].faces]}


def track_json(track: TrackSummary) -> dict[str, Any]:
    """A video's track (``TrackOut``)."""
    return {
        "track_id": track.track_id,
        "score": round(track.score, 6),
        "peak_score": round(track.peak_score, 6),
        "label": track.label,
        "frames": [
            {"index": f.index, "time_s": f.time_s, "box": list(f.box), "score": round(f.score, 6)} for f in track.frames
        ],
        "segments": [
            {
                "start_s": s.start_s,
                "end_s": s.end_s,
                "start_index": s.start_index,
                "end_index": s.end_index,
                "peak_score": round(s.peak_score, 6),
            }
            for s in track.segments
        ],
    }
