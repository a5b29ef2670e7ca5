"""What a server should answer, computed locally with the same pipeline, for REST and gRPC tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from fsfm.analysis import Analyzer, ImageAnalysis
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.detector import create_detector
from fsfm.package import ModelRepository

Reference = Callable[..., ImageAnalysis]


def make_reference(models: Path, default_ref: str) -> Reference:
    """``reference(image, "name:version", threshold=None)``: the local Analyzer + ONNX Runtime answer."""
    detector = create_detector()
    repository = ModelRepository(models)
    engines: dict[str, OnnxRuntimeEngine] = {}

    def analyze(image: np.ndarray, ref: str = default_ref, threshold: float | None = None) -> ImageAnalysis:
        package = repository.get(ref)
        engine = engines.setdefault(ref, OnnxRuntimeEngine(package.onnx_path))
        return Analyzer(detector, package.manifest, engine).analyze(image, threshold)

    return analyze


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()
