"""A test engine, registered by tests only: ONNX Runtime under another registry name, recording the
file of every variant it is made with. One module plus one ``register`` call, as a new engine is."""

from __future__ import annotations

from pathlib import Path

from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.engines.registry import EngineOptions, EngineSpec
from fsfm.engines.select import Selection
from fsfm.package import ModelPackage

SPEC = EngineSpec("test-recording", "tests.recording_engine", "cpu", {"onnx": ("fp32", "int8")})
MADE: list[Path] = []  # the variant file of every engine made, in order


class RecordingEngine(OnnxRuntimeEngine):
    name = SPEC.name


def unavailable() -> str | None:
    return None


def create(package: ModelPackage, selection: Selection, options: EngineOptions) -> RecordingEngine:
    engine = RecordingEngine(selection.path, threads=options.threads)
    MADE.append(engine.path)
    return engine
