"""What a server should answer, computed locally with the same steps, for REST, gRPC and CLI tests.

``analyze_locally`` is the service's pipeline without the service: the detector, the model's crop
(``fsfm.analysis.prepare_faces``), one ONNX Runtime call, ``judge`` and ``verdict``; no batcher, queue
or core in between, so an answer that went through them can be checked against it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fsfm.analysis import FaceResult, Verdict, judge, prepare_faces, verdict
from fsfm.engines.base import Engine
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import FaceDetector, create_detector
from fsfm.package import ModelRepository
from fsfm.package.manifest import Manifest


@dataclass
class ImageAnalysis:
    faces: list[FaceResult] = field(default_factory=list)
    verdict: Verdict | None = None


Reference = Callable[..., ImageAnalysis]


def analyze_locally(
    image: np.ndarray, detector: FaceDetector, manifest: Manifest, engine: Engine, threshold: float | None = None
) -> ImageAnalysis:
    """Detect, crop, classify and judge ``image`` (RGB uint8 (H, W, 3)) with one synchronous engine call."""
    threshold = manifest.thresholds.default if threshold is None else threshold
    prepared = prepare_faces(image, detector.detect(image), manifest)
    tensors = [p.tensor for p in prepared if p.tensor is not None]
    if tensors:
        logits = engine.run(np.stack(tensors))[manifest.onnx.output_name]
    else:
        logits = np.zeros((0, manifest.architecture.num_classes), np.float32)
    results = judge(prepared, logits, manifest, threshold)
    return ImageAnalysis(results, verdict(results, manifest, threshold))


def make_reference(models: Path, default_ref: str) -> Reference:
    """``reference(image, "name:version", threshold=None)``: ``analyze_locally`` with ONNX Runtime."""
    detector = create_detector()
    repository = ModelRepository(models)
    engines: dict[str, OnnxRuntimeEngine] = {}

    def analyze(image: np.ndarray, ref: str = default_ref, threshold: float | None = None) -> ImageAnalysis:
        package = repository.get(ref)
        engine = engines.setdefault(ref, OnnxRuntimeEngine(package.onnx_path))
        return analyze_locally(image, detector, package.manifest, engine, threshold)

    return analyze


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()
