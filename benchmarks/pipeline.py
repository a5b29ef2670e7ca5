"""``fsfm bench pipeline``: where one request's time goes, stage by stage, run in this process
with the service's own functions: decode, detect, crop (+ normalise), infer, encode (the REST JSON
body and the gRPC message). Stages run one after another on an idle machine, so each gets every
core; under load they share them (``fsfm bench serve`` reports the service's own stage times).

With ``evidence`` (``--evidence heatmap,robustness,audit``), each kind's cost is measured apart, with the
service's functions (``fsfm/evidence.py``): its inputs made, scored by the engine in batches of the
service's default ``max_batch_size``, and read into the answer's evidence, per judged face; the audit
record (hashing the request's bytes) per request. The stages' table is unchanged by it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from benchmarks.stats import table
from fsfm.analysis import FaceResult, judge, prepare_faces, verdict
from fsfm.engines.base import Engine
from fsfm.evidence import (
    AUDIT,
    EVIDENCE_KINDS,
    audit_record,
    evidence_inputs,
    face_evidence,
    inferences_per_face,
    package_sha256,
)
from fsfm.face.detector import FaceDetector
from fsfm.imaging import decode_image
from fsfm.package import ModelPackage
from fsfm.scoring import attack_scores

STAGES = ("decode", "detect", "crop", "infer", "encode_rest", "encode_grpc")


@dataclass
class StageCost:
    stage: str
    median_ms: float
    share: float  # of the sum of the stages' medians


@dataclass
class EvidenceCost:
    kind: str
    inferences: int  # extra inferences per face (audit: none)
    median_ms: float  # per judged face; audit: per request
    per: str  # "face" or "request"


@dataclass
class PipelineResult:
    image_bytes: int
    width: int
    height: int
    faces: int  # judged faces per request
    stages: list[StageCost]
    evidence: list[EvidenceCost] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(s.median_ms for s in self.stages)


def bench_pipeline(
    data: bytes,
    package: ModelPackage,
    detector: FaceDetector,
    engine: Engine,
    repeats: int = 10,
    evidence: Collection[str] = (),
) -> PipelineResult:
    """Median time of each stage of one request over ``repeats`` runs (after one untimed run); with
    ``evidence``, of each evidence kind too (``evidence_costs``)."""
    from service.core import FrameReport, Report
    from service.grpc_messages import analysis_message
    from service.rest.schemas import report_json

    manifest = package.manifest
    threshold = manifest.thresholds.default
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def timed(stage: str, call: Callable[..., object], *args: object) -> object:
        started = time.perf_counter()
        result = call(*args)
        timings[stage].append(time.perf_counter() - started)
        return result

    for _ in range(repeats + 1):
        image = timed("decode", decode_image, data)
        faces = timed("detect", detector.detect, image)
        prepared = timed("crop", prepare_faces, image, faces, manifest)
        tensors = [p.tensor for p in prepared if p.tensor is not None]
        if not tensors:
            raise ValueError("no judged face in the benchmark image: give one with a face of the model's minimum size")
        logits = timed("infer", lambda batch: engine.run(np.stack(batch)), tensors)[manifest.onnx.output_name]
        results = judge(prepared, logits, manifest, threshold)
        report = Report(
            "bench",
            manifest,
            threshold,
            "default",
            [FrameReport(0, 0.0, results)],
            verdict(results, manifest, threshold),
            is_video=False,
        )
        timed("encode_rest", lambda answer: json.dumps(report_json(answer)).encode(), report)
        timed("encode_grpc", lambda answer: analysis_message(answer).SerializeToString(), report)
    medians = {stage: float(np.median(times[1:])) * 1000 for stage, times in timings.items()}
    total = sum(medians.values())
    return PipelineResult(
        len(data),
        image.shape[1],
        image.shape[0],
        len(tensors),
        [StageCost(stage, ms, ms / total) for stage, ms in medians.items()],
        evidence_costs(data, package, engine, results, tensors, evidence, repeats),
    )


def evidence_costs(
    data: bytes,
    package: ModelPackage,
    engine: Engine,
    results: list[FaceResult],
    tensors: list[np.ndarray],
    kinds: Collection[str],
    repeats: int,
) -> list[EvidenceCost]:
    """Median time of each evidence kind (in ``EVIDENCE_KINDS`` order) over ``repeats`` runs after one
    untimed run: per judged face for the heatmap and the probes, per request for the audit record."""
    from service.settings import Settings

    manifest = package.manifest
    threshold = manifest.thresholds.default
    batch_size = Settings.model_fields["max_batch_size"].default  # the service's batches, not one huge run
    judged = [r for r in results if r.score is not None]
    package_hash = package_sha256(package.path)  # read once at load by the service

    def explain(kind: str) -> None:
        wanted = frozenset({kind})
        for result, tensor in zip(judged, tensors, strict=True):
            inputs = evidence_inputs(tensor, wanted, manifest.normalization)
            logits = [
                engine.run(inputs[i : i + batch_size])[manifest.onnx.output_name]
                for i in range(0, len(inputs), batch_size)
            ]
            scores = attack_scores(np.concatenate(logits), manifest)
            face_evidence(wanted, result.score, result.label, scores, [0.0, 0.0, 1.0, 1.0], threshold, manifest)

    def audit(kind: str) -> None:
        audit_record(hashlib.sha256(data).hexdigest(), manifest, package_hash, threshold, "default", None, "bench")

    costs = []
    for kind in (k for k in EVIDENCE_KINDS if k in kinds):
        run, per = (audit, "request") if kind == AUDIT else (explain, "face")
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            run(kind)
            times.append(time.perf_counter() - started)
        median_ms = float(np.median(times[1:])) * 1000 / (1 if per == "request" else len(judged))
        costs.append(EvidenceCost(kind, inferences_per_face({kind}), median_ms, per))
    return costs


def pipeline_table(result: PipelineResult) -> str:
    """The stages' table; with evidence measured, its table below."""
    rows = [[s.stage, s.median_ms, f"{100 * s.share:.1f}%"] for s in result.stages]
    rows.append(["total", result.total_ms, "100%"])
    stages = table(["stage", "median ms", "share"], rows)
    if not result.evidence:
        return stages
    costs = [[c.kind, c.inferences, c.median_ms, c.per] for c in result.evidence]
    return stages + "\n\n" + table(["evidence", "extra inferences per face", "median ms", "per"], costs)
