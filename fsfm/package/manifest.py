"""The model manifest: everything needed to feed a model and to read its output.

Written by ``fsfm export`` beside ``model.onnx``; read by ``fsfm analyze`` and the service. The
preprocessing (crop, normalisation) and the output semantics live here, never in code constants.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from fsfm.face.crop import CropSpec, Normalization
from fsfm.models.config import ViTConfig

Task = Literal["deepfake", "liveness", "diffusion"]
TASKS: tuple[str, ...] = ("deepfake", "liveness", "diffusion")

MANIFEST_FILE = "manifest.json"


class ClassSemantics(BaseModel):
    """What the logits mean. The reported ``score`` is the softmax probability of ``attack_index``
    (fake / spoof / generated): higher is more suspicious, whatever the class order."""

    names: list[str] = Field(min_length=2)
    attack_index: int = Field(ge=0)

    @model_validator(mode="after")
    def _index_in_range(self) -> "ClassSemantics":
        if self.attack_index >= len(self.names):
            raise ValueError(f"attack_index {self.attack_index} out of range for classes {self.names}")
        return self

    @property
    def attack_label(self) -> str:
        return self.names[self.attack_index]

    @property
    def genuine_label(self) -> str:
        """The label when the score is below threshold: the first non-attack class."""
        return next(n for i, n in enumerate(self.names) if i != self.attack_index)


# Official FSFM class orders (method spec §7): DfD/DiFF index 0 = fake, 1 = real; FAS 1 = live.
DEFAULT_CLASSES: dict[str, ClassSemantics] = {
    "deepfake": ClassSemantics(names=["fake", "real"], attack_index=0),
    "diffusion": ClassSemantics(names=["fake", "real"], attack_index=0),
    "liveness": ClassSemantics(names=["spoof", "live"], attack_index=0),
}


class OperatingPoint(BaseModel):
    """A calibrated threshold on the attack score, with what it achieved on the calibration set."""

    name: str = Field(description='e.g. "eer", "fpr_1pct"')
    threshold: float = Field(ge=0.0, le=1.0)
    target_fpr: float | None = Field(default=None, description="the false-positive rate it was chosen for")
    fpr: float | None = None
    tpr: float | None = None


class Thresholds(BaseModel):
    default: float = Field(default=0.5, ge=0.0, le=1.0)
    operating_points: list[OperatingPoint] = Field(default_factory=list)

    def for_target_fpr(self, target_fpr: float) -> OperatingPoint:
        """The operating point calibrated for ``target_fpr`` (exact match, 1e-9)."""
        for point in self.operating_points:
            if point.target_fpr is not None and abs(point.target_fpr - target_fpr) < 1e-9:
                return point
        known = sorted(p.target_fpr for p in self.operating_points if p.target_fpr is not None)
        raise KeyError(f"no operating point for target_fpr={target_fpr}; calibrated: {known}")


class Architecture(BaseModel):
    family: Literal["vit"] = "vit"
    preset: str | None = Field(default=None, description="a VIT_PRESETS name, when the config is one")
    vit: ViTConfig
    global_pool: bool = True
    num_classes: int = 2

    def flops_per_image(self) -> int:
        return self.vit.flops_per_image()


class OnnxInfo(BaseModel):
    file: str = "model.onnx"
    opset: int
    input_name: str = "images"
    output_name: str = "logits"
    dynamic_batch: bool = True
    max_abs_diff: float = Field(description="max |torch - onnxruntime| of the logits on the export check batch")
    tolerance: float
    sha256: str


class TensorRTInfo(BaseModel):
    file: str = "model.plan"
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    device: str = Field(description="GPU the engine was built on (plans are device-specific)")
    tensorrt_version: str


class HeldOutCheck(BaseModel):
    """A held-out set scored by the fp32 graph and by a quantised variant: what quantising cost."""

    set: str
    faces: int = Field(ge=1)
    auc_fp32: float | None = Field(default=None, description="None when the set holds one class only")
    auc_int8: float | None = None
    max_abs_score_diff: float = Field(ge=0, description="largest |attack score difference| over the set's faces")
    mean_abs_score_diff: float = Field(ge=0)
    label_agreement: float = Field(ge=0, le=1, description="share of faces labelled alike at the default threshold")


class Int8Info(BaseModel):
    """The package's int8 ONNX variant (``fsfm quantize``), served with ``FSFM_PRECISION=int8``."""

    file: str = "model.int8.onnx"
    method: str
    sha256: str
    heldout: list[HeldOutCheck] = Field(min_length=1, description="its accuracy against fp32 on held-out faces")


class Provenance(BaseModel):
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    data: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    fsfm_version: str | None = None
    notes: str | None = None


class PackageInfo(BaseModel):
    """What the exporter is told about a model; ``Manifest`` adds what export measures."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: int = Field(ge=1)
    task: Task
    description: str = ""
    demo: bool = Field(default=False, description="a demo model: not fit for decisions")
    licence: str | None = None
    crop: CropSpec = Field(default_factory=CropSpec)
    normalization: Normalization = Field(default_factory=Normalization)
    classes: ClassSemantics
    thresholds: Thresholds = Field(default_factory=Thresholds)
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="before")
    @classmethod
    def _default_classes(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("classes") is None and data.get("task") in DEFAULT_CLASSES:
            data = {**data, "classes": DEFAULT_CLASSES[data["task"]]}
        return data

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def reference(self) -> dict[str, object]:
        """How answers name the model: ``{name, version, task, demo}`` (REST, gRPC, ``fsfm analyze``)."""
        return {"name": self.name, "version": self.version, "task": self.task, "demo": self.demo}


class Manifest(PackageInfo):
    schema_version: Literal[1] = 1
    architecture: Architecture
    onnx: OnnxInfo
    tensorrt: TensorRTInfo | None = None
    onnx_int8: Int8Info | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if len(self.classes.names) != self.architecture.num_classes:
            raise ValueError(
                f"{len(self.classes.names)} class names for a {self.architecture.num_classes}-class model"
            )
        if self.crop.size != self.architecture.vit.img_size:
            raise ValueError(f"crop size {self.crop.size} != model input size {self.architecture.vit.img_size}")
        return self

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    def replace_in(self, folder: Path) -> Path:
        """Rewrite ``folder``'s manifest with this one atomically: a reader (a service loading the
        repository) sees the old file or the new one, never part of one."""
        Manifest.model_validate(self.model_dump())  # re-check before replacing the file
        path = Path(folder) / MANIFEST_FILE
        tmp = Path(folder) / f".{MANIFEST_FILE}.tmp"
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        return cls.model_validate_json((Path(folder) / MANIFEST_FILE).read_text())
