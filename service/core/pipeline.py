"""The analysis pipeline of one request: detect and crop (preprocessing threads), infer (the model's
backend), judge (per-face scores, labels) -> frame reports.

The steps are ``fsfm/analysis.py``'s ``prepare_faces`` and ``judge``, the same ones ``fsfm analyze``
runs, with the backend's batching in between; the faces of all a request's frames share one
``infer`` call, so they can share batches. Stage times go to ``fsfm_stage_duration_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from fsfm.analysis import PreparedFace, judge, prepare_faces
from fsfm.face.detector import FaceDetector
from fsfm.package.manifest import Manifest
from service.batcher import InferenceResult
from service.cancellation import stop_if_ended
from service.core.models import ServedModel
from service.core.report import FrameReport
from service.media import Frame
from service.metrics import Metrics


@dataclass
class PipelineResult:
    frames: list[FrameReport]
    stage_s: dict[str, float] = field(default_factory=dict)  # detect, queue, infer


def class_logits(result: InferenceResult, manifest: Manifest) -> np.ndarray:
    """The (N, num_classes) logits among a backend's named outputs: the one place the core reads them."""
    return result.outputs[manifest.onnx.output_name]


class Pipeline:
    def __init__(self, detector: FaceDetector, executor: Executor, metrics: Metrics) -> None:
        self.detector = detector
        self.executor = executor
        self.metrics = metrics

    async def run(
        self,
        model: ServedModel,
        frames: list[Frame],
        threshold: float,
        deadline: float,
        on_prepared: Callable[[], None] | None = None,
    ) -> PipelineResult:
        """``on_prepared`` is called once detection and cropping are done, before inference (admission
        gives the request's preprocessing slot to the next one)."""
        manifest = model.manifest
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        prepared = await loop.run_in_executor(self.executor, self._detect_and_prepare, frames, manifest)
        if on_prepared is not None:
            on_prepared()
        stage_s = {"detect": time.monotonic() - started, "queue": 0.0, "infer": 0.0}
        tensors = [p.tensor for faces in prepared for p in faces if p.tensor is not None]
        logits = np.zeros((0, manifest.architecture.num_classes), np.float32)
        if tensors:
            result = await model.backend.infer(np.stack(tensors), deadline)
            logits, stage_s["queue"], stage_s["infer"] = class_logits(result, manifest), result.queue_s, result.infer_s
        for stage, seconds in stage_s.items():
            if stage == "detect" or tensors:
                self.metrics.stage_duration.labels(stage, model.label).observe(seconds)
        reports: list[FrameReport] = []
        offset = 0
        for frame, faces in zip(frames, prepared, strict=True):
            judged = sum(p.tensor is not None for p in faces)
            results = judge(faces, logits[offset : offset + judged], manifest, threshold)
            offset += judged
            reports.append(FrameReport(frame.index, frame.time_s, results))
        return PipelineResult(reports, stage_s)

    def _detect_and_prepare(self, frames: list[Frame], manifest: Manifest) -> list[list[PreparedFace]]:
        prepared = []
        for frame in frames:
            stop_if_ended()
            faces = self.detector.detect(frame.rgb)
            self.metrics.faces_per_input.observe(len(faces))
            prepared.append(prepare_faces(frame.rgb, faces, manifest))
        return prepared
