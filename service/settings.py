"""Service configuration: one pydantic-settings object, from ``FSFM_*`` environment variables and
``fsfm serve`` flags (flags win). Every field is documented in the README's configuration table."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fsfm.engines.registry import ENGINES, combination_error
from fsfm.engines.select import AUTO
from fsfm.evidence import inferences_per_face
from fsfm.face.detector import (
    DEFAULT_DETECTOR,
    DEFAULT_MIN_FACE_SIZE,
    DEFAULT_SCORE_THRESHOLD,
    DETECT_MAX_SIDE,
    DetectorConfig,
    DetectorKind,
)
from fsfm.imaging import ImageLimits
from fsfm.package.manifest import PRECISIONS


@dataclass(frozen=True)
class VideoLimits:
    """What one video request may cost: its longest duration, the frames analysed at most (the ceiling
    of ``max_frames``), the pixels of those frames in all, and the faces judged (the largest first).
    Synchronous requests get the server's (``Settings.video_limits``); asynchronous jobs their own."""

    max_seconds: float
    max_frames: int
    max_pixels: int
    max_faces: int


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FSFM_", extra="ignore")

    # Where and what to serve.
    models: Path = Field(default=Path("models"), description="model repository folder")
    host: str = Field(default="127.0.0.1", description="REST bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="REST port (0: any free port)")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0: any free port)")
    engine: str = Field(
        default="auto", description='"auto" (fsfm.engines.select) or a registered engine (fsfm.engines.registry)'
    )
    engine_threads: int | None = Field(
        default=None, ge=1, description="ONNX Runtime intra-op threads (default: all cores)"
    )
    precision: str = Field(default="auto", description='"auto" or the precision to run: fp32, int8, fp16, bf16')
    accept_drift: bool = Field(
        default=False,
        description="serve a precision asked for by name although its recorded drift from fp32 exceeds the tolerance",
    )
    queue: str = Field(default="local", description='"local" (in-process) or a redis:// URL (Redis Streams)')

    # Dynamic batching (Triton's semantics).
    max_batch_size: int = Field(default=8, ge=1, description="faces per engine call, at most")
    max_queue_delay_ms: float = Field(default=5.0, ge=0, description="longest wait for a batch to fill")
    max_queue_size: int = Field(default=256, ge=1, description="queued faces per model before 429 / RESOURCE_EXHAUSTED")

    # Admission, decided before any decode or detection (docs/api.md).
    max_concurrent_requests: int = Field(
        default=4, ge=1, description="requests in decode, detect and crop at once (twice the preprocessing threads)"
    )
    max_waiting_requests: int = Field(
        default=64, ge=0, description="admitted requests waiting for a preprocessing slot before 429"
    )

    # Face detection.
    # The defaults are fsfm prepare's too (fsfm.face.detector), so that models see the crops they learnt on.
    detector: DetectorKind = DEFAULT_DETECTOR
    detector_weights: Path | None = Field(default=None, description="detector ONNX (default: the shipped weights)")
    min_face_size: int = Field(
        default=DEFAULT_MIN_FACE_SIZE, ge=8, description="smallest face side searched for, in pixels"
    )
    detection_threshold: float = Field(default=DEFAULT_SCORE_THRESHOLD, ge=0, le=1)
    detect_max_side: int = Field(
        default=DETECT_MAX_SIDE, ge=32, description="longest side of the copy faces are detected on (pixels)"
    )

    # Limits and security.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1, description="request body limit (413)")
    max_pixels: int = Field(default=40_000_000, ge=1, description="decoded image / video frame pixels")
    max_side: int = Field(default=12_000, ge=1, description="longest image side in pixels")
    max_video_seconds: float = Field(default=60.0, gt=0, description="longest video accepted")
    max_video_frames: int = Field(default=64, ge=1, description="frames analysed per video, at most")
    max_video_pixels: int = Field(
        default=24_000_000, ge=1, description="pixels of a video's analysed frames in all; fewer frames past it"
    )
    max_faces_per_request: int = Field(
        default=64, ge=1, description="faces judged per request, the largest first (at most max_queue_size)"
    )
    max_evidence_faces: int = Field(
        default=4,
        ge=1,
        description="faces per request that get the heatmap and robustness evidence when asked, the most "
        "suspicious first (each costs up to 51 extra inferences; at most what max_queue_size holds)",
    )
    max_grpc_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request deadline")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted x-api-key values, comma-separated (empty: no auth)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="CORS origins (empty: off)")
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    shutdown_grace_s: float = Field(default=20.0, ge=0, description="drain time for in-flight work on SIGTERM")

    # Asynchronous jobs and their webhooks (docs/api.md, "Jobs" and "Webhooks").
    job_ttl_s: float = Field(default=3600.0, gt=0, description="how long a finished job and its result are kept")
    job_timeout_s: float = Field(default=600.0, gt=0, description="a job's analysis deadline, from when it starts")
    job_max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="a job's request body limit (413)")
    job_max_video_seconds: float = Field(default=600.0, gt=0, description="longest video a job accepts")
    job_max_video_frames: int = Field(default=512, ge=1, description="frames a job analyses per video, at most")
    job_max_video_pixels: int = Field(
        default=200_000_000, ge=1, description="pixels of a job video's analysed frames in all; fewer frames past it"
    )
    job_max_faces: int = Field(
        default=256, ge=1, description="faces a job judges, the largest first (at most max_queue_size)"
    )
    max_pending_jobs: int = Field(
        default=16, ge=1, description="jobs queued or running on this node before 429 too_many_jobs"
    )
    max_pending_job_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1, description="media bytes held by this node's queued and running jobs (429)"
    )
    max_running_jobs: int = Field(default=2, ge=1, description="jobs analysed at once on this node; the rest queue")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key of webhook signatures; a job with a callback_url needs it"
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts a callback_url may name, comma-separated (empty: any host)"
    )
    webhook_max_attempts: int = Field(default=5, ge=1, description="deliveries of one webhook, at most")
    webhook_backoff_s: float = Field(
        default=1.0, ge=0, description="wait before the 2nd delivery; doubled before each next one"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="one delivery's time limit")

    @field_validator("engine")
    @classmethod
    def _registered_engine(cls, value: str) -> str:
        if value != AUTO and value not in ENGINES:
            raise ValueError(f"unknown engine {value!r}; choose from {', '.join((AUTO, *ENGINES))}")
        return value

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        if value != AUTO and value not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}; choose from {', '.join((AUTO, *PRECISIONS))}")
        return value

    @model_validator(mode="after")
    def _engine_runs_precision(self) -> Settings:
        if (error := combination_error(self.engine, self.precision)) is not None:
            raise ValueError(error)
        return self

    @field_validator("api_keys", "cors_origins", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            kind=self.detector,
            weights=self.detector_weights,
            min_face_size=self.min_face_size,
            score_threshold=self.detection_threshold,
            max_side=self.detect_max_side,
        )

    def faces_per_request(self) -> int:
        """The faces a request may have judged: never more than the queue holds, so that no request is
        refused for its size on an idle server."""
        return min(self.max_faces_per_request, self.max_queue_size)

    def evidence_faces(self, kinds: Collection[str]) -> int:
        """The judged faces of a request that get the per-face evidence ``kinds``: ``max_evidence_faces``, never
        more than the queue holds with their extra inferences (0: not even one face's fit)."""
        per_face = inferences_per_face(kinds)
        return min(self.max_evidence_faces, self.max_queue_size // per_face) if per_face else 0

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, max_side=self.max_side)

    def video_limits(self) -> VideoLimits:
        """A synchronous request's video limits."""
        return VideoLimits(
            self.max_video_seconds, self.max_video_frames, self.max_video_pixels, self.faces_per_request()
        )

    def job_video_limits(self) -> VideoLimits:
        """An asynchronous job's video limits: longer videos than a synchronous request may bring."""
        faces = min(self.job_max_faces, self.max_queue_size)
        return VideoLimits(self.job_max_video_seconds, self.job_max_video_frames, self.job_max_video_pixels, faces)
