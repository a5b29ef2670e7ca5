"""Engine selection for the service: one ``Engine`` per model package, by settings."""

from __future__ import annotations

from pathlib import Path

from fsfm.engines.base import Engine, EngineError
from fsfm.package import ModelPackage
from service.settings import Settings


def onnx_graph(package: ModelPackage, precision: str) -> Path:
    """The package's fp32 graph, or its int8 variant; a package without the variant asked for is
    an error (the service does not quietly serve another precision than the one configured)."""
    if precision == "fp32":
        return package.onnx_path
    if package.int8_path is None or not package.int8_path.is_file():
        raise EngineError(
            f"{package.manifest.ref} has no int8 variant: add one with `fsfm quantize --model {package.manifest.ref} "
            f"--heldout ...`, or serve with FSFM_PRECISION=fp32"
        )
    return package.int8_path


def create_engine(package: ModelPackage, settings: Settings) -> Engine:
    """ONNX Runtime (default; CUDA/TensorRT execution providers when installed), TensorRT from the
    package's ``model.plan``, or torch for development."""
    if settings.engine == "onnxruntime":
        from fsfm.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx_graph(package, settings.precision), threads=settings.engine_threads)
    if settings.engine == "tensorrt":
        from fsfm.engines.tensorrt import TensorRTEngine

        if package.plan_path is None or not package.plan_path.is_file():
            raise EngineError(f"{package.manifest.ref} has no TensorRT plan: build one with `fsfm export --tensorrt`")
        return TensorRTEngine(package.plan_path)
    from fsfm.engines.torch import TorchEngine

    return TorchEngine(package)
