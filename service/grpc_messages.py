"""Protobuf <-> core types for the gRPC door (proto/fsfm/v1/analysis.proto): pure translation, no I/O.

Requests become ``AnalysisOptions`` and media bytes or frames; ``Report``, ``AggregateSnapshot`` (with
its face tracks), the model listing and ``AnalysisError`` become messages. A message that cannot be translated
(no task, no image, malformed raw pixels) raises the ``AnalysisError`` the door answers with.
"""

from __future__ import annotations

import json

from fsfm.analysis import FaceResult, Verdict
from fsfm.evidence import FaceEvidence
from fsfm.imaging import ImageLimits
from fsfm.package.manifest import TASKS, Manifest
from fsfm.tracking import Segment, TrackSummary
from service.core import AggregateSnapshot, AnalysisOptions, Frame, ModelListing, Report
from service.core.request import MAX_MODEL_NAME_CHARS
from service.errors import AnalysisError, BadInput
from service.grpc_stubs import pb
from service.media import raw_frame

_TASK_VALUES: dict[str, int] = {task: pb.Task.Value(f"TASK_{task.upper()}") for task in TASKS}
_TASK_NAMES: dict[int, str] = {value: task for task, value in _TASK_VALUES.items()}


# ---- requests -----------------------------------------------------------------------------------


def analysis_options(message: pb.AnalysisOptions, fps: float | None = None, max_frames: int = 0) -> AnalysisOptions:
    """The core's options; what cannot be served is refused by ``options_error``."""
    return AnalysisOptions(
        task=_TASK_NAMES.get(message.task, "unspecified"),
        model=message.model or None,
        threshold=message.threshold if message.HasField("threshold") else None,
        target_fpr=message.target_fpr if message.HasField("target_fpr") else None,
        fps=fps,
        max_frames=max_frames or None,
        evidence=tuple(message.evidence) or None,
    )


def options_error(message: pb.AnalysisOptions) -> AnalysisError | None:
    """The error of options without a task or with a model name longer than ``MAX_MODEL_NAME_CHARS``
    (as REST refuses it), or None."""
    if message.task not in _TASK_NAMES:
        names = ", ".join(name for name in pb.Task.keys() if name != "TASK_UNSPECIFIED")
        return BadInput("missing_task", f"set options.task to one of {names}")
    if len(message.model) > MAX_MODEL_NAME_CHARS:
        return BadInput("invalid_parameter", f"options.model is longer than {MAX_MODEL_NAME_CHARS} characters")
    return None


def image_input(image: pb.Image, limits: ImageLimits) -> bytes | list[Frame]:
    """An ``Image``'s encoded bytes (the core decodes them) or its raw pixels as one frame."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return image.encoded
    if kind == "raw":
        return [Frame(0, 0.0, raw_frame(image.raw.width, image.raw.height, image.raw.rgb, limits))]
    raise BadInput("missing_image", "set image.encoded (JPEG, PNG or WebP bytes) or image.raw (RGB pixels)")


# ---- answers ------------------------------------------------------------------------------------


def model_info(manifest: Manifest) -> pb.ModelInfo:
    reference = manifest.reference()
    return pb.ModelInfo(**{**reference, "task": _TASK_VALUES[manifest.task]})


def face_message(result: FaceResult) -> pb.Face:
    x1, y1, x2, y2 = result.face.box.tolist()
    face = pb.Face(
        box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2),
        landmarks=[pb.Point(x=x, y=y) for x, y in result.face.landmarks.tolist()],
        detection_score=float(result.face.score),
        judged=result.score is not None,
        reason=result.skip_reason or "",
    )
    if result.score is not None:
        face.score, face.label, face.threshold = result.score, result.label, result.threshold
    if result.track_id is not None:
        face.track_id = result.track_id
    if result.evidence is not None:
        face.evidence.CopyFrom(evidence_message(result.evidence))
    return face


def evidence_message(evidence: FaceEvidence) -> pb.FaceEvidence:
    message = pb.FaceEvidence()
    if (heatmap := evidence.heatmap) is not None:
        x1, y1, x2, y2 = heatmap.box
        rows, cols = heatmap.grid.shape
        message.heatmap.CopyFrom(
            pb.Heatmap(
                method=heatmap.method,
                rows=rows,
                cols=cols,
                grid=heatmap.grid.ravel().tolist(),
                png=heatmap.png,
                box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2),
            )
        )
    if (robustness := evidence.robustness) is not None:
        message.robustness.CopyFrom(pb.Robustness(probes=robustness.probes, fragile=robustness.fragile))
    return message


def audit_message(audit: dict) -> pb.Audit:
    """``fsfm.evidence.audit_record`` as ``Audit``."""
    return pb.Audit(
        request_id=audit["request_id"],
        input_sha256=audit["input_sha256"],
        model=pb.AuditModel(**audit["model"]),
        thresholds_json=json.dumps(audit["thresholds"]),
        threshold=audit["threshold"],
        threshold_source=audit["threshold_source"],
        engine=pb.EngineChoice(**audit["engine"]) if audit["engine"] else None,
        code_version=audit["code_version"],
        created_at=audit["created_at"],
    )


def verdict_message(verdict: Verdict) -> pb.Verdict:
    message = pb.Verdict(label=verdict.label or "", reason=verdict.reason or "")
    if verdict.score is not None:
        message.score = verdict.score
    if verdict.track_id is not None:
        message.track_id = verdict.track_id
    return message


def _segment_messages(segments: tuple[Segment, ...]) -> list[pb.TrackSegment]:
    return [
        pb.TrackSegment(
            start_index=s.start_index, end_index=s.end_index, start_s=s.start_s, end_s=s.end_s, peak_score=s.peak_score
        )
        for s in segments
    ]


def track_message(track: TrackSummary) -> pb.Track:
    """A video's track, with its frames."""
    frames = [
        pb.TrackFrame(
            index=f.index,
            time_s=f.time_s,
            box=pb.Box(x1=f.box[0], y1=f.box[1], x2=f.box[2], y2=f.box[3]),
            score=f.score,
        )
        for f in track.frames
    ]
    return pb.Track(
        track_id=track.track_id,
        score=track.score,
        peak_score=track.peak_score,
        label=track.label,
        frames=frames,
        segments=_segment_messages(track.segments),
    )


def track_aggregates(snapshot: AggregateSnapshot) -> list[pb.TrackAggregate]:
    """A stream's tracks so far, as ``FrameResult.tracks``."""
    return [
        pb.TrackAggregate(
            track_id=track.track_id,
            frames=track.frame_count,
            score=track.score,
            peak_score=track.peak_score,
            label=track.label,
            segments=_segment_messages(track.segments),
        )
        for track in snapshot.tracks
    ]


def _answer_fields(report: Report) -> dict[str, object]:
    """The fields ``ImageAnalysis`` and ``VideoAnalysis`` share."""
    return {
        "request_id": report.request_id,
        "model": model_info(report.model),
        "threshold": report.threshold,
        "threshold_source": report.threshold_source,
        "verdict": verdict_message(report.verdict),
        "timing_ms": report.timing_ms,
        "audit": audit_message(report.audit) if report.audit is not None else None,
    }


def analysis_message(report: Report) -> pb.ImageAnalysis:
    """A one-image ``Report`` as ``ImageAnalysis``."""
    return pb.ImageAnalysis(faces=[face_message(face) for face in report.frames[0].faces], **_answer_fields(report))


def video_message(report: Report) -> pb.VideoAnalysis:
    """A video's ``Report`` as ``VideoAnalysis``."""
    frames = [
        pb.FrameAnalysis(index=frame.index, time_s=frame.time_s, faces=[face_message(f) for f in frame.faces])
        for frame in report.frames
    ]
    tracks = [track_message(track) for track in report.tracks or ()]
    return pb.VideoAnalysis(frames=frames, tracks=tracks, **_answer_fields(report))


def aggregate_message(snapshot: AggregateSnapshot) -> pb.Aggregate:
    aggregate = pb.Aggregate(
        frames_seen=snapshot.frames_seen,
        frames_failed=snapshot.frames_failed,
        faces_seen=snapshot.faces_seen,
        window_frames=snapshot.window_frames,
        window_faces=snapshot.window_faces,
        verdict=verdict_message(snapshot.verdict),
    )
    if snapshot.mean_score is not None:
        aggregate.mean_score = snapshot.mean_score
    if snapshot.max_score is not None:
        aggregate.max_score = snapshot.max_score
    return aggregate


def error_message(error: AnalysisError) -> pb.Error:
    return pb.Error(code=error.grpc_code, reason=error.reason, message=error.message)


def models_message(listing: list[ModelListing]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelEntry(
                model=model_info(entry.manifest),
                default_for_task=entry.default_for_task,
                default_threshold=entry.manifest.thresholds.default,
                manifest_json=entry.manifest.model_dump_json(),
                engine=pb.EngineChoice(**entry.engine) if entry.engine else None,
            )
            for entry in listing
        ]
    )
