"""ONNX Runtime engine: the embedded default (CPU), with CUDA/TensorRT providers when present.
Registered as ``onnxruntime``: it runs the package's ONNX variants (fp32 reference, int8)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsfm.engines.base import EngineCancelled, EngineError, RunCancellation

if TYPE_CHECKING:
    from fsfm.engines.registry import EngineOptions
    from fsfm.engines.select import Selection
    from fsfm.package import ModelPackage

# Preference order when the caller does not name providers: the fastest one installed wins.
_PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def unavailable() -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "ONNX Runtime is not installed: pip install onnxruntime"


def create(package: ModelPackage, selection: Selection, options: EngineOptions) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(selection.path, threads=options.threads)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxRuntimeEngine:
    """Runs an ONNX file with one input through an ``onnxruntime.InferenceSession``.

    threads: intra-op threads; ``None`` lets ONNX Runtime use every core. The service gives each
    model's engine its own session, and one batch at a time, so intra-op parallelism is what
    uses the machine.
    memory_arena: keep freed tensor memory in ONNX Runtime's CPU arena for the next run (fast for
    inputs of one shape); off, each run's memory goes back to the allocator, which suits inputs whose
    shape changes every run (the face detectors' images), where an arena only grows.
    """

    name = "onnxruntime"
    cancellable = True
    selection: Selection | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        memory_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        ort.disable_telemetry_events()  # no usage events from this process (fsfm/__init__.py)
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = memory_arena
        # Intra-op threads spin between the operators of a run (a wake-up per operator would cost more
        # than small operators take), but not after it: spinning on would take the cores from whatever
        # runs next in this process (another stage, another request's detection).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self._ort = ort
        installed = set(ort.get_available_providers())
        if providers is None:
            chosen = [p for p in _PREFERRED_PROVIDERS if p in installed]
        else:
            missing = [p for p in providers if p not in installed]
            if missing:
                raise EngineError(f"ONNX Runtime providers not installed: {missing}; installed: {sorted(installed)}")
            chosen = list(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"cannot load {self.path}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{self.path} has {len(inputs)} inputs; engines take models with one input")
        self.input_name: str = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        self.providers: list[str] = self.session.get_providers()

    def run(self, batch: np.ndarray, cancellation: RunCancellation | None = None) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        options = self._ort.RunOptions()
        if cancellation is not None:
            cancellation.hook(lambda: setattr(options, "terminate", True))
        try:
            outputs = self.session.run(list(self.output_names), {self.input_name: batch}, options)
        except Exception as exc:
            if cancellation is not None and cancellation.cancelled:
                raise EngineCancelled(f"the run on {self.path.name} was cancelled") from None
            raise EngineError(f"inference failed on {self.path.name}: {exc}") from exc
        return dict(zip(self.output_names, outputs, strict=False))

    def warmup(self, sample: np.ndarray, passes: int = 2) -> None:
        for _ in range(passes):
            self.run(sample)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees its memory with it)."""
        self.__dict__.pop("session", None)
