"""The model manifest: everything needed to feed a model and to read its output.

Written by ``fsfm export`` beside ``model.onnx``; read by ``fsfm analyze`` and the service. The
preprocessing (crop, normalisation) and the output semantics live here, never in code constants.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator

from fsfm.face.crop import CropSpec, Normalization
from fsfm.models.config import ViTConfig

Task = Literal["deepfake", "liveness", "diffusion"]
TASKS: tuple[str, ...] = ("deepfake", "liveness", "diffusion")

MANIFEST_FILE = "manifest.json"
DEMO_NOTICE = "a demo model: not fit for decisions"  # a demo package's notice when it has no description


class ClassSemantics(BaseModel):
    """What the logits mean. The reported ``score`` is the softmax probability of ``attack_index``
    (fake / spoof / generated): higher is more suspicious, whatever the class order."""

    names: list[str] = Field(min_length=2)
    attack_index: int = Field(ge=0)

    @model_validator(mode="after")
    def _index_in_range(self) -> ClassSemantics:
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


# Official FSFM class orders (docs/finetuning.md): DfD/DiFF index 0 = fake, 1 = real; FAS 1 = live.
DEFAULT_CLASSES: dict[str, ClassSemantics] = {
    "deepfake": ClassSemantics(names=["fake", "real"], attack_index=0),
    "diffusion": ClassSemantics(names=["fake", "real"], attack_index=0),
    "liveness": ClassSemantics(names=["spoof", "live"], attack_index=0),
}


Interval = tuple[float, float]


class OperatingPoint(BaseModel):
    """A calibrated threshold on the attack score, with what it achieved on the calibration set, on how many
    faces, and the 95 % (Wilson) interval of each rate."""

    name: str = Field(description='e.g. "eer", "fpr_1pct"')
    threshold: float = Field(ge=0.0, le=1.0)
    target_fpr: float | None = Field(default=None, description="the false-positive rate it was chosen for")
    fpr: float | None = None
    tpr: float | None = None
    genuine: int | None = Field(default=None, description="genuine faces the FPR was measured on")
    attacks: int | None = Field(default=None, description="attack faces the TPR was measured on")
    fpr_interval: Interval | None = Field(default=None, description="95 % Wilson interval of the FPR")
    tpr_interval: Interval | None = Field(default=None, description="95 % Wilson interval of the TPR")


class UnresolvedPoint(BaseModel):
    """A target FPR the calibration set was too small to calibrate: at least ``needed`` genuine faces
    (10 expected false positives) are needed, it had ``genuine``."""

    target_fpr: float
    genuine: int
    needed: int


class Thresholds(BaseModel):
    default: float = Field(default=0.5, ge=0.0, le=1.0)
    operating_points: list[OperatingPoint] = Field(default_factory=list)
    unresolved: list[UnresolvedPoint] = Field(
        default_factory=list, description="target FPRs asked for that the calibration set could not resolve"
    )

    def for_target_fpr(self, target_fpr: float) -> OperatingPoint:
        """The operating point calibrated for ``target_fpr`` (exact match, 1e-9)."""
        for point in self.operating_points:
            if point.target_fpr is not None and abs(point.target_fpr - target_fpr) < 1e-9:
                return point
        known = sorted(p.target_fpr for p in self.operating_points if p.target_fpr is not None)
        why = next(
            (
                f" (the calibration set's {u.genuine} genuine faces cannot resolve it: {u.needed} needed)"
                for u in self.unresolved
                if abs(u.target_fpr - target_fpr) < 1e-9
            ),
            "",
        )
        raise KeyError(f"no operating point for target_fpr={target_fpr}{why}; calibrated: {known}")


class Architecture(BaseModel):
    family: Literal["vit"] = "vit"
    preset: str | None = Field(default=None, description="a VIT_PRESETS name, when the config is one")
    vit: ViTConfig
    global_pool: bool = True
    num_classes: int = 2
    head: Literal["linear", "flip"] = Field(
        default="linear",
        description="linear: fc_norm -> Linear (DfD/DiFF, ours); flip: the official FAS head (training/flip.py)",
    )

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


Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
VariantFormat = Literal["onnx", "openvino-ir", "tensorrt-plan"]


class HeldOutCheck(BaseModel):
    """A held-out set scored by the fp32 graph and by a variant: what the variant's precision cost."""

    set: str
    faces: int = Field(ge=1)
    auc_fp32: float | None = Field(default=None, description="None when the set holds one class only")
    auc_variant: float | None = None
    max_abs_score_diff: float = Field(ge=0, description="largest |attack score difference| over the set's faces")
    mean_abs_score_diff: float = Field(ge=0)
    label_agreement: float = Field(ge=0, le=1, description="share of faces labelled alike at the default threshold")

    @property
    def agreeing_faces(self) -> int:
        return round(self.label_agreement * self.faces)

    measured_on: str | None = Field(
        default=None, description="the engine and CPU it was measured with (bf16 and int8 kernels differ by CPU)"
    )

    @model_validator(mode="before")
    @classmethod
    def _migrate_int8_name(cls, data: object) -> object:
        if isinstance(data, dict) and "auc_int8" in data:  # the int8-only form of the first manifests
            data = {k: v for k, v in data.items() if k != "auc_int8"} | {"auc_variant": data["auc_int8"]}
        return data


class DriftTolerance(BaseModel):
    """How far a lower-precision variant may stray from fp32 on every held-out set it was judged on,
    for the service to run it without being forced (``FSFM_ACCEPT_DRIFT``). A variant that flips
    more than 1% of labels at the default threshold, or moves a score by more than 0.05, is not a
    speed-up of the same model."""

    max_abs_score_diff: float = Field(default=0.05, ge=0, le=1)
    min_label_agreement: float = Field(default=0.99, ge=0, le=1)

    def describe(self) -> str:
        return f"max |score diff| <= {self.max_abs_score_diff:g}, labels agree on >= {self.min_label_agreement:.0%}"


DEFAULT_DRIFT_TOLERANCE = DriftTolerance()


class PlanBuild(BaseModel):
    """How a TensorRT plan was built: plans load only with that TensorRT version on that GPU model."""

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    device: str = Field(description="GPU the plan was built on (plans are device-specific)")
    tensorrt_version: str


class Variant(BaseModel):
    """A graph of the model in one precision and format: the reference ``model.onnx`` (fp32, see
    ``Manifest.reference_variant``), an int8 ONNX graph (``fsfm quantize``), a TensorRT plan (``fsfm
    export --tensorrt``). ``heldout`` holds what the variant costs against fp32 on held-out faces,
    where its maker measured it."""

    precision: Precision
    format: VariantFormat = "onnx"
    file: str = Field(description="relative to the package folder (an absolute path stays as it is)")
    sha256: str | None = None
    method: str = Field(default="", description="how the variant was made")
    heldout: list[HeldOutCheck] = Field(default_factory=list)
    plan: PlanBuild | None = Field(default=None, description="for format tensorrt-plan")

    @model_validator(mode="after")
    def _plan_for_plans(self) -> Variant:
        if (self.format == "tensorrt-plan") != (self.plan is not None):
            raise ValueError("a tensorrt-plan variant, and only one, records its build (plan)")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return self.precision, self.format

    def drift_problem(self, tolerance: DriftTolerance = DEFAULT_DRIFT_TOLERANCE) -> str | None:
        """Why this variant may not stand in for fp32 unasked: no held-out check recorded, or a set
        on which it strays beyond ``tolerance``. None for fp32 and for variants within it. An fp16
        TensorRT plan needs no record (fp16 keeps 10 of fp32's 23 mantissa bits, bf16 7, and TensorRT
        keeps the layers that would overflow in fp32); its record, where there is one, still counts."""
        if self.precision == "fp32" or (self.precision == "fp16" and not self.heldout):
            return None
        if not self.heldout:
            return f"its {self.precision} drift from fp32 was never measured (`fsfm quantize` measures it)"
        for check in self.heldout:
            if (
                check.max_abs_score_diff > tolerance.max_abs_score_diff
                or check.label_agreement < tolerance.min_label_agreement
            ):
                return (
                    f"its {self.precision} drift on {check.set!r} (max |score diff| {check.max_abs_score_diff:.3g}, "
                    f"labels agree on {check.agreeing_faces} of {check.faces} faces) exceeds the tolerance "
                    f"({tolerance.describe()})"
                )
        return None


INT8_FILE = "model.int8.onnx"
OPENVINO_INT8_FILE = "model.int8.openvino.xml"  # with its weights beside it, .bin
# The variants `fsfm quantize` makes (``training.quantize.VARIANTS`` holds how), named here for light imports.
QUANTIZE_VARIANTS: tuple[str, ...] = ("onnxruntime-int8", "openvino-int8", "openvino-bf16")
PLAN_FILE = "model.plan"


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
        """How answers name the model: ``{name, version, task, demo}`` (REST, gRPC, ``fsfm analyze``), and for
        a demo model a ``notice`` (its description), so that whoever reads a verdict also reads what it is worth."""
        reference: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "demo": self.demo,
        }
        if self.demo:
            reference["notice"] = self.description or DEMO_NOTICE
        return reference


class Manifest(PackageInfo):
    """``onnx`` is the reference graph (fp32, ONNX): its input and output names are the model's, and
    every variant is judged against it. ``variants`` are the package's other graphs, one per
    (precision, format). Manifests written before variants existed (``onnx_int8``, ``tensorrt``)
    load as their variants."""

    schema_version: Literal[1] = 1
    architecture: Architecture
    onnx: OnnxInfo
    variants: list[Variant] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _migrate_variant_sections(cls, data: object) -> object:
        if not isinstance(data, dict) or not ({"onnx_int8", "tensorrt"} & data.keys()):
            return data
        data = dict(data)
        variants = list(data.get("variants") or [])
        if (int8 := data.pop("onnx_int8", None)) is not None:
            variants.append({"precision": "int8", "format": "onnx", **int8})
        if (plan := data.pop("tensorrt", None)) is not None:
            plan = dict(plan)
            variants.append(
                {
                    "precision": plan.pop("precision", "fp16"),
                    "format": "tensorrt-plan",
                    "file": plan.pop("file", PLAN_FILE),
                    "method": f"TensorRT {plan.get('tensorrt_version', '')} plan",
                    "plan": plan,
                }
            )
        return {**data, "variants": variants}

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.classes.names) != self.architecture.num_classes:
            raise ValueError(f"{len(self.classes.names)} class names for a {self.architecture.num_classes}-class model")
        if self.crop.size != self.architecture.vit.img_size:
            raise ValueError(f"crop size {self.crop.size} != model input size {self.architecture.vit.img_size}")
        keys = [v.key for v in self.all_variants()]
        if len(set(keys)) != len(keys):
            raise ValueError(f"one variant per (precision, format); got {keys} (the reference is ('fp32', 'onnx'))")
        return self

    @property
    def reference_variant(self) -> Variant:
        """The exported fp32 ONNX graph, as a variant."""
        return Variant(precision="fp32", format="onnx", file=self.onnx.file, sha256=self.onnx.sha256, method="export")

    def all_variants(self) -> list[Variant]:
        """The reference first, then the declared variants."""
        return [self.reference_variant, *self.variants]

    def variant(self, precision: str, format: str = "onnx") -> Variant | None:
        """The package's graph in ``precision`` and ``format``, or None when it carries none."""
        return next((v for v in self.all_variants() if v.key == (precision, format)), None)

    def with_variant(self, variant: Variant) -> Manifest:
        """A copy that carries ``variant``, replacing one of the same precision and format."""
        kept = [v for v in self.variants if v.key != variant.key]
        return self.model_copy(update={"variants": [*kept, variant]})

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
    def load(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((Path(folder) / MANIFEST_FILE).read_text())
