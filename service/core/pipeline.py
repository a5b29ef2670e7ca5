"""The analysis pipeline of one request: detect and crop (preprocessing threads), infer (the model's
backend), judge (per-face scores, labels) -> frame reports.

The steps are ``fsfm/analysis.py``'s ``prepare_faces`` and ``judge``, the same ones ``fsfm analyze``
runs, with the backend's batching in between; the faces of all a request's frames share one
``infer`` call, so they can share batches. Stage times go to ``fsfm_stage_duration_seconds``.

Bounded work: the frames are taken one at a time from their iterator (a video is decoded as it goes,
``service/media.py``), each is detected on a bounded copy (``fsfm.face.bounded``) and cropped, and
only its crops and face boxes are kept, never its pixels. At most ``max_faces`` faces of a request
are judged, its largest (``LargestFaces``); the others are reported with the reason ``face_limit``.
After a request that decoded many pixels the freed memory goes back to the system (``service/memory.py``).

Evidence (opt-in, ``fsfm/evidence.py``): once the faces are judged, the heatmap's occluded copies and the
robustness probes of the request's ``evidence_faces`` most suspicious judged faces go through the same
backend in one more ``infer`` call, so they count against its bounded queue like any face (the core
chooses ``evidence_faces`` so that they fit an idle queue; a busy one refuses them, 429). Without
evidence asked, nothing of this runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from fsfm.analysis import FaceResult, LargestFaces, PreparedFace, judge, prepare_faces
from fsfm.evidence import FACE_EVIDENCE_KINDS, crop_square, evidence_inputs, face_evidence, inferences_per_face
from fsfm.face.detector import FaceDetector
from fsfm.package.manifest import Manifest
from fsfm.scoring import attack_scores
from service.batcher import InferenceResult
from service.cancellation import stop_if_ended
from service.core.models import ServedModel
from service.core.report import FrameReport
from service.media import Frame
from service.memory import RELEASE_AFTER_PIXELS, release_memory
from service.metrics import Metrics


@dataclass
class PipelineResult:
    frames: list[FrameReport]
    # decode (of frames decoded as taken), detect, queue, infer; evidence when asked for
    stage_s: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedFrame:
    """What is kept of a frame once detected and cropped: its place, size, faces, their crops."""

    index: int
    time_s: float
    width: int
    height: int
    faces: list[PreparedFace]


@dataclass
class Prepared:
    """A request's prepared frames, the time spent decoding and detecting them, and their pixels."""

    frames: list[PreparedFrame] = field(default_factory=list)
    decode_s: float = 0.0
    detect_s: float = 0.0
    pixels: int = 0


def class_logits(result: InferenceResult, manifest: Manifest) -> np.ndarray:
    """The (N, num_classes) logits among a backend's named outputs: the one place the core reads them."""
    return result.outputs[manifest.onnx.output_name]


@dataclass
class EvidenceFace:
    """A judged face whose evidence was asked for: its result, model input and crop square in image pixels."""

    result: FaceResult
    tensor: np.ndarray
    square: list[float]


class Pipeline:
    def __init__(self, detector: FaceDetector, executor: Executor, metrics: Metrics, max_faces: int) -> None:
        self.detector = detector
        self.executor = executor
        self.metrics = metrics
        self.max_faces = max_faces

    async def run(
        self,
        model: ServedModel,
        frames: Iterator[Frame],
        threshold: float,
        deadline: float,
        on_prepared: Callable[[], None] | None = None,
        evidence: frozenset[str] = frozenset(),
        evidence_faces: int = 0,
        max_faces: int | None = None,
        on_frame: Callable[[int], None] | None = None,
    ) -> PipelineResult:
        """``on_prepared`` is called once detection and cropping are done, before inference (admission
        gives the request's preprocessing slot to the next one); ``on_frame`` after each frame, with
        the frames done so far (on the preprocessing thread). ``max_faces`` replaces the pipeline's.
        ``evidence``: the kinds asked for, given to the ``evidence_faces`` most suspicious judged faces
        (``Settings.evidence_faces``)."""
        face_kinds = evidence & FACE_EVIDENCE_KINDS
        manifest = model.manifest
        prepared = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._prepare, frames, manifest, max_faces or self.max_faces, on_frame
        )
        if on_prepared is not None:
            on_prepared()
        stage_s = {"decode": prepared.decode_s, "detect": prepared.detect_s, "queue": 0.0, "infer": 0.0}
        tensors = [p.tensor for frame in prepared.frames for p in frame.faces if p.tensor is not None]
        logits = np.zeros((0, manifest.architecture.num_classes), np.float32)
        if tensors:
            result = await model.backend.infer(np.stack(tensors), deadline)
            logits, stage_s["queue"], stage_s["infer"] = class_logits(result, manifest), result.queue_s, result.infer_s
        for stage in ("detect", "queue", "infer"):
            if stage == "detect" or tensors:
                self.metrics.stage_duration.labels(stage, model.label).observe(stage_s[stage])
        reports: list[FrameReport] = []
        explained: list[EvidenceFace] = []
        offset = 0
        for frame in prepared.frames:
            judged = sum(p.tensor is not None for p in frame.faces)
            results = judge(frame.faces, logits[offset : offset + judged], manifest, threshold)
            offset += judged
            reports.append(FrameReport(frame.index, frame.time_s, results))
            for face, result in zip(frame.faces, results, strict=True):
                if face.tensor is not None and face_kinds:
                    square = crop_square(face.face.box, frame.width, frame.height, manifest.crop)
                    explained.append(EvidenceFace(result, face.tensor, square))
        if explained:
            started = time.monotonic()
            # The most suspicious first; of equal scores the first (a stable sort).
            chosen = sorted(explained, key=lambda face: -(face.result.score or 0.0))[:evidence_faces]
            await self._explain(model, chosen, face_kinds, threshold, deadline)
            stage_s["evidence"] = time.monotonic() - started
            self.metrics.stage_duration.labels("evidence", model.label).observe(stage_s["evidence"])
        return PipelineResult(reports, stage_s)

    async def _explain(
        self, model: ServedModel, chosen: list[EvidenceFace], kinds: frozenset[str], threshold: float, deadline: float
    ) -> None:
        """Attach the evidence ``kinds`` to the ``chosen`` faces: their inputs are made and read on the
        preprocessing threads, scored by the model's backend in one call."""
        manifest = model.manifest
        loop = asyncio.get_running_loop()

        def inputs() -> np.ndarray:
            return np.concatenate([evidence_inputs(f.tensor, kinds, manifest.normalization) for f in chosen])

        result = await model.backend.infer(await loop.run_in_executor(self.executor, inputs), deadline)
        scores = attack_scores(class_logits(result, manifest), manifest).reshape(len(chosen), -1)
        assert scores.shape[1] == inferences_per_face(kinds)

        def attach() -> None:
            for face, face_scores in zip(chosen, scores, strict=True):
                score, label = face.result.score, face.result.label
                assert score is not None and label is not None  # a judged face
                face.result.evidence = face_evidence(kinds, score, label, face_scores, face.square, threshold, manifest)

        await loop.run_in_executor(self.executor, attach)

    def _prepare(
        self, frames: Iterator[Frame], manifest: Manifest, max_faces: int, on_frame: Callable[[int], None] | None
    ) -> Prepared:
        prepared = Prepared()
        try:
            self._detect_and_crop(frames, manifest, prepared, max_faces, on_frame)
        finally:
            if prepared.pixels > RELEASE_AFTER_PIXELS:
                release_memory()  # the frames are gone by now, decoded to the end or not
        return prepared

    def _detect_and_crop(
        self,
        frames: Iterator[Frame],
        manifest: Manifest,
        prepared: Prepared,
        max_faces: int,
        on_frame: Callable[[int], None] | None,
    ) -> None:
        """Take the frames one by one (decoding them, for a video) into ``prepared``: their faces, and the
        crops of the request's ``max_faces`` largest."""
        largest = LargestFaces(max_faces)
        while True:
            stop_if_ended()  # the request ended: no more decoding or detection
            started = time.monotonic()
            frame = next(frames, None)
            detecting = time.monotonic()
            prepared.decode_s += detecting - started
            if frame is None:
                return
            prepared.pixels += frame.rgb.shape[0] * frame.rgb.shape[1]
            faces = self.detector.detect(frame.rgb)
            self.metrics.faces_per_input.observe(len(faces))
            crops = prepare_faces(frame.rgb, faces, manifest, largest)
            height, width = frame.rgb.shape[:2]
            prepared.frames.append(PreparedFrame(frame.index, frame.time_s, width, height, crops))
            del frame  # before the next one is decoded
            prepared.detect_s += time.monotonic() - detecting
            if on_frame is not None:
                on_frame(len(prepared.frames))
