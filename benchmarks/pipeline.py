"""``fsfm bench pipeline``: where one request's time goes, stage by stage, run in this process
with the service's own functions: decode, detect, crop (+ normalise), infer, encode (the REST JSON
body and the gRPC message). Stages run one after another on an idle machine, so each gets every
core; under load they share them (``fsfm bench serve`` reports the service's own stage times)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from benchmarks.stats import table
from fsfm.analysis import judge, prepare_faces, verdict
from fsfm.engines.base import Engine
from fsfm.face.detector import FaceDetector
from fsfm.imaging import decode_image
from fsfm.package import ModelPackage

STAGES = ("decode", "detect", "crop", "infer", "encode_rest", "encode_grpc")


@dataclass
class StageCost:
    stage: str
    median_ms: float
    share: float  # of the sum of the stages' medians


@dataclass
class PipelineResult:
    image_bytes: int
    width: int
    height: int
    faces: int  # judged faces per request
    stages: list[StageCost]

    @property
    def total_ms(self) -> float:
        return sum(s.median_ms for s in self.stages)


def bench_pipeline(
    data: bytes, package: ModelPackage, detector: FaceDetector, engine: Engine, repeats: int = 10
) -> PipelineResult:
    """Median time of each stage of one request over ``repeats`` runs (after one untimed run)."""
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
    )


def pipeline_table(result: PipelineResult) -> str:
    rows = [[s.stage, s.median_ms, f"{100 * s.share:.1f}%"] for s in result.stages]
    rows.append(["total", result.total_ms, "100%"])
    return table(["stage", "median ms", "share"], rows)
