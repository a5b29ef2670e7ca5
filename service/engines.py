"""Engine selection for the service: one ``Engine`` per model package, by settings."""

from __future__ import annotations

from fsfm.engines.base import Engine, EngineError
from fsfm.package import ModelPackage
from service.settings import Settings


def create_engine(package: ModelPackage, settings: Settings) -> Engine:
    """ONNX Runtime (default; CUDA/TensorRT execution providers when installed), TensorRT from the
    package's ``model.plan``, or torch for development."""
    if settings.engine == "onnxruntime":
        from fsfm.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(package.onnx_path, threads=settings.engine_threads)
    if settings.engine == "tensorrt":
        from fsfm.engines.tensorrt import TensorRTEngine

        if package.plan_path is None or not package.plan_path.is_file():
            raise EngineError(f"{package.manifest.ref} has no TensorRT plan: build one with `fsfm export --tensorrt`")
        return TensorRTEngine(package.plan_path)
    from fsfm.engines.torch import TorchEngine

    return TorchEngine(package)
