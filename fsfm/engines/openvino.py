"""OpenVINO engine (Intel's runtime; CPU): compiles the package's fp32 ONNX graph in f32 or, with the
inference-precision hint, bf16; or an int8 OpenVINO IR (``fsfm quantize``: NNCF's static
post-training quantisation). Registered as ``openvino``; the ``openvino`` package is a dependency of
the ``serve`` extra.

bf16 is not a separate file: OpenVINO lowers the fp32 graph itself when compiling with
``INFERENCE_PRECISION_HINT=bf16``, on CPUs with AVX512-BF16 or AMX (elsewhere it runs f32). A package
declares a bf16 variant naming that graph to record its drift from fp32 (``fsfm quantize``). The int8
IR is compiled with the runtime's default hint: its quantised matrix products run in int8 (VNNI,
AMX), the layers left in floating point in bf16 where the CPU has bf16 instructions, else in f32.
Compiled models are cached under the fsfm cache (``<cache>/openvino/<precision>``, OpenVINO's
``CACHE_DIR``), so a restart does not compile again. References: OpenVINO's "Precision Control" and "Model Caching
Overview" guides (docs.openvino.ai).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np

from fsfm.engines.base import EngineCancelled, EngineError, RunCancellation

if TYPE_CHECKING:
    from pathlib import Path

    from fsfm.engines.registry import EngineOptions
    from fsfm.engines.select import Selection
    from fsfm.package import ModelPackage

INSTALL_HINT = "pip install openvino (in the `serve` extra)"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}  # fsfm precision -> OpenVINO's hint (None: its default)


def unavailable() -> str | None:
    return None if importlib.util.find_spec("openvino") else f"OpenVINO is not installed: {INSTALL_HINT}"


def create(package: ModelPackage, selection: Selection, options: EngineOptions) -> OpenVinoEngine:
    from fsfm.assets import cache_dir

    return OpenVinoEngine(selection.path, selection.precision, options.threads, cache_dir() / "openvino")


class OpenVinoEngine:
    """One ONNX graph or OpenVINO IR with one input (dynamic batch), compiled for the CPU; one inference request,
    reused (the batcher runs one batch at a time)."""

    name = "openvino"
    cancellable = True
    selection: Selection | None = None

    def __init__(
        self, path: Path, precision: str = "fp32", threads: int | None = None, cache: Path | None = None
    ) -> None:
        try:
            import openvino
        except ImportError as exc:
            raise EngineError(f"OpenVINO is not installed ({exc}): {INSTALL_HINT}") from exc
        if precision not in _HINTS:
            raise EngineError(f"the openvino engine runs {', '.join(_HINTS)}, not {precision}")
        if not path.is_file():
            raise EngineError(f"ONNX file not found: {path}")
        self.path = path
        core = openvino.Core()
        if cache is not None:
            # One folder per precision: OpenVINO 2026.4's cache key leaves the precision hint out, and
            # a graph compiled in f32 and then loaded from the cache for bf16 answers NaN.
            cache = cache / precision
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if (hint := _HINTS[precision]) is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:  # also a missing or damaged IR weights file (.bin)
            raise EngineError(f"OpenVINO cannot compile {path}: {exc}") from exc
        if len(self._compiled.inputs) != 1:
            raise EngineError(f"{path} has {len(self._compiled.inputs)} inputs; engines take models with one input")
        self.input_name: str = self._compiled.input(0).get_any_name()
        self.output_names: tuple[str, ...] = tuple(o.get_any_name() for o in self._compiled.outputs)
        self._request = self._compiled.create_infer_request()

    def run(self, batch: np.ndarray, cancellation: RunCancellation | None = None) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if cancellation is not None:
            cancellation.hook(self._request.cancel)
        try:
            results = self._request.infer({self.input_name: batch})
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            if cancellation is not None and cancellation.cancelled:
                raise EngineCancelled(f"the run on {self.path.name} was cancelled") from None
            raise EngineError(f"inference failed on {self.path.name}: {exc}") from exc
        # Copies: the request's output tensors are overwritten by the next call.
        return {name: np.array(results[self._compiled.output(name)], dtype=np.float32) for name in self.output_names}

    def warmup(self, sample: np.ndarray, passes: int = 2) -> None:
        for _ in range(passes):
            self.run(sample)

    def close(self) -> None:
        """Drop the request before the compiled model that owns it."""
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)
