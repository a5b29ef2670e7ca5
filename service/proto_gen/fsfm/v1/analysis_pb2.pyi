from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_DEEPFAKE: _ClassVar[Task]
    TASK_LIVENESS: _ClassVar[Task]
    TASK_DIFFUSION: _ClassVar[Task]
TASK_UNSPECIFIED: Task
TASK_DEEPFAKE: Task
TASK_LIVENESS: Task
TASK_DIFFUSION: Task

class RawImage(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class AnalysisOptions(_message.Message):
    __slots__ = ("task", "model", "threshold", "target_fpr", "evidence")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    task: Task
    model: str
    threshold: float
    target_fpr: float
    evidence: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., model: _Optional[str] = ..., threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ..., evidence: _Optional[_Iterable[str]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("image", "options", "index", "time_s")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    image: Image
    options: AnalysisOptions
    index: int
    time_s: float
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[AnalysisOptions, _Mapping]] = ..., index: _Optional[int] = ..., time_s: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "landmarks", "detection_score", "judged", "score", "label", "threshold", "reason", "track_id", "evidence")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    box: Box
    landmarks: _containers.RepeatedCompositeFieldContainer[Point]
    detection_score: float
    judged: bool
    score: float
    label: str
    threshold: float
    reason: str
    track_id: int
    evidence: FaceEvidence
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., landmarks: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., detection_score: _Optional[float] = ..., judged: _Optional[bool] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., threshold: _Optional[float] = ..., reason: _Optional[str] = ..., track_id: _Optional[int] = ..., evidence: _Optional[_Union[FaceEvidence, _Mapping]] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("method", "rows", "cols", "grid", "png", "box")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    method: str
    rows: int
    cols: int
    grid: _containers.RepeatedScalarFieldContainer[float]
    png: bytes
    box: Box
    def __init__(self, method: _Optional[str] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., grid: _Optional[_Iterable[float]] = ..., png: _Optional[bytes] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class Robustness(_message.Message):
    __slots__ = ("probes", "fragile")
    class ProbesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROBES_FIELD_NUMBER: _ClassVar[int]
    FRAGILE_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.ScalarMap[str, float]
    fragile: bool
    def __init__(self, probes: _Optional[_Mapping[str, float]] = ..., fragile: _Optional[bool] = ...) -> None: ...

class FaceEvidence(_message.Message):
    __slots__ = ("heatmap", "robustness")
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    ROBUSTNESS_FIELD_NUMBER: _ClassVar[int]
    heatmap: Heatmap
    robustness: Robustness
    def __init__(self, heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., robustness: _Optional[_Union[Robustness, _Mapping]] = ...) -> None: ...

class AuditModel(_message.Message):
    __slots__ = ("name", "version", "package_sha256", "onnx_sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    ONNX_SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    package_sha256: str
    onnx_sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., package_sha256: _Optional[str] = ..., onnx_sha256: _Optional[str] = ...) -> None: ...

class Audit(_message.Message):
    __slots__ = ("request_id", "input_sha256", "model", "thresholds_json", "threshold", "threshold_source", "engine", "code_version", "created_at")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_JSON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    input_sha256: str
    model: AuditModel
    thresholds_json: str
    threshold: float
    threshold_source: str
    engine: EngineChoice
    code_version: str
    created_at: str
    def __init__(self, request_id: _Optional[str] = ..., input_sha256: _Optional[str] = ..., model: _Optional[_Union[AuditModel, _Mapping]] = ..., thresholds_json: _Optional[str] = ..., threshold: _Optional[float] = ..., threshold_source: _Optional[str] = ..., engine: _Optional[_Union[EngineChoice, _Mapping]] = ..., code_version: _Optional[str] = ..., created_at: _Optional[str] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("label", "score", "reason", "track_id")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    reason: str
    track_id: int
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[str] = ..., track_id: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "task", "demo", "notice")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DEMO_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    task: Task
    demo: bool
    notice: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., task: _Optional[_Union[Task, str]] = ..., demo: _Optional[bool] = ..., notice: _Optional[str] = ...) -> None: ...

class ImageAnalysis(_message.Message):
    __slots__ = ("request_id", "model", "threshold", "threshold_source", "faces", "verdict", "timing_ms", "audit")
    class TimingMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TIMING_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: ModelInfo
    threshold: float
    threshold_source: str
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    verdict: Verdict
    timing_ms: _containers.ScalarMap[str, float]
    audit: Audit
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., threshold: _Optional[float] = ..., threshold_source: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., timing_ms: _Optional[_Mapping[str, float]] = ..., audit: _Optional[_Union[Audit, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    message: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Aggregate(_message.Message):
    __slots__ = ("frames_seen", "frames_failed", "faces_seen", "window_frames", "window_faces", "mean_score", "max_score", "verdict")
    FRAMES_SEEN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FAILED_FIELD_NUMBER: _ClassVar[int]
    FACES_SEEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FACES_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    frames_seen: int
    frames_failed: int
    faces_seen: int
    window_frames: int
    window_faces: int
    mean_score: float
    max_score: float
    verdict: Verdict
    def __init__(self, frames_seen: _Optional[int] = ..., frames_failed: _Optional[int] = ..., faces_seen: _Optional[int] = ..., window_frames: _Optional[int] = ..., window_faces: _Optional[int] = ..., mean_score: _Optional[float] = ..., max_score: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ...) -> None: ...

class TrackSegment(_message.Message):
    __slots__ = ("start_index", "end_index", "start_s", "end_s", "peak_score")
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    END_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_SCORE_FIELD_NUMBER: _ClassVar[int]
    start_index: int
    end_index: int
    start_s: float
    end_s: float
    peak_score: float
    def __init__(self, start_index: _Optional[int] = ..., end_index: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., peak_score: _Optional[float] = ...) -> None: ...

class TrackFrame(_message.Message):
    __slots__ = ("index", "time_s", "box", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    time_s: float
    box: Box
    score: float
    def __init__(self, index: _Optional[int] = ..., time_s: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class Track(_message.Message):
    __slots__ = ("track_id", "score", "label", "frames", "segments", "peak_score")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PEAK_SCORE_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    score: float
    label: str
    frames: _containers.RepeatedCompositeFieldContainer[TrackFrame]
    segments: _containers.RepeatedCompositeFieldContainer[TrackSegment]
    peak_score: float
    def __init__(self, track_id: _Optional[int] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[TrackFrame, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[TrackSegment, _Mapping]]] = ..., peak_score: _Optional[float] = ...) -> None: ...

class TrackAggregate(_message.Message):
    __slots__ = ("track_id", "frames", "score", "label", "segments", "peak_score")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PEAK_SCORE_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    frames: int
    score: float
    label: str
    segments: _containers.RepeatedCompositeFieldContainer[TrackSegment]
    peak_score: float
    def __init__(self, track_id: _Optional[int] = ..., frames: _Optional[int] = ..., score: _Optional[float] = ..., label: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[TrackSegment, _Mapping]]] = ..., peak_score: _Optional[float] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("sequence", "index", "time_s", "analysis", "error", "aggregate", "tracks")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    index: int
    time_s: float
    analysis: ImageAnalysis
    error: Error
    aggregate: Aggregate
    tracks: _containers.RepeatedCompositeFieldContainer[TrackAggregate]
    def __init__(self, sequence: _Optional[int] = ..., index: _Optional[int] = ..., time_s: _Optional[float] = ..., analysis: _Optional[_Union[ImageAnalysis, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., aggregate: _Optional[_Union[Aggregate, _Mapping]] = ..., tracks: _Optional[_Iterable[_Union[TrackAggregate, _Mapping]]] = ...) -> None: ...

class AnalyzeImageRequest(_message.Message):
    __slots__ = ("image", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: Image
    options: AnalysisOptions
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., options: _Optional[_Union[AnalysisOptions, _Mapping]] = ...) -> None: ...

class AnalyzeVideoRequest(_message.Message):
    __slots__ = ("video", "options", "fps", "max_frames")
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    video: bytes
    options: AnalysisOptions
    fps: float
    max_frames: int
    def __init__(self, video: _Optional[bytes] = ..., options: _Optional[_Union[AnalysisOptions, _Mapping]] = ..., fps: _Optional[float] = ..., max_frames: _Optional[int] = ...) -> None: ...

class FrameAnalysis(_message.Message):
    __slots__ = ("index", "time_s", "faces")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    index: int
    time_s: float
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    def __init__(self, index: _Optional[int] = ..., time_s: _Optional[float] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ...) -> None: ...

class VideoAnalysis(_message.Message):
    __slots__ = ("request_id", "model", "threshold", "threshold_source", "frames", "verdict", "timing_ms", "tracks", "audit")
    class TimingMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TIMING_MS_FIELD_NUMBER: _ClassVar[int]
    TRACKS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: ModelInfo
    threshold: float
    threshold_source: str
    frames: _containers.RepeatedCompositeFieldContainer[FrameAnalysis]
    verdict: Verdict
    timing_ms: _containers.ScalarMap[str, float]
    tracks: _containers.RepeatedCompositeFieldContainer[Track]
    audit: Audit
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., threshold: _Optional[float] = ..., threshold_source: _Optional[str] = ..., frames: _Optional[_Iterable[_Union[FrameAnalysis, _Mapping]]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., timing_ms: _Optional[_Mapping[str, float]] = ..., tracks: _Optional[_Iterable[_Union[Track, _Mapping]]] = ..., audit: _Optional[_Union[Audit, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelEntry(_message.Message):
    __slots__ = ("model", "default_for_task", "default_threshold", "manifest_json", "engine")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FOR_TASK_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    default_for_task: bool
    default_threshold: float
    manifest_json: str
    engine: EngineChoice
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., default_for_task: _Optional[bool] = ..., default_threshold: _Optional[float] = ..., manifest_json: _Optional[str] = ..., engine: _Optional[_Union[EngineChoice, _Mapping]] = ...) -> None: ...

class EngineChoice(_message.Message):
    __slots__ = ("engine", "precision", "file")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    engine: str
    precision: str
    file: str
    def __init__(self, engine: _Optional[str] = ..., precision: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelEntry]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelEntry, _Mapping]]] = ...) -> None: ...
