"""Native TensorRT engine: runs the ``model.plan`` that ``fsfm export --tensorrt`` built on this GPU.

Device memory comes from CUDA Python's runtime bindings (``cuda.bindings.runtime``, the
``cuda-python`` / ``cuda-bindings`` package), not from torch, CuPy or PyCUDA:

- torch is not in the slim serving image, and a CUDA build of it weighs gigabytes;
- CuPy brings a whole array library (and NVRTC) to do four calls: malloc, memcpy, stream, free;
- PyCUDA is usually built from source against a local CUDA toolkit, and its ``autoinit`` makes
  its own context beside the runtime's primary context that TensorRT uses;
- ``cuda.bindings.runtime`` is NVIDIA's thin binding of the CUDA runtime API, a small binary wheel
  per CUDA major version, and what TensorRT's own Python samples use. It works in the same primary
  context as TensorRT, so pointers pass between them as plain integers.

Registered as ``tensorrt``: it runs the package's ``tensorrt-plan`` variant. Nothing here imports
torch. The TensorRT >= 10 tensor API is used throughout (named I/O tensors,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); it is unchanged in TensorRT 11.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from fsfm.engines.base import EngineError

if TYPE_CHECKING:
    from fsfm.engines.registry import EngineOptions
    from fsfm.engines.select import Selection
    from fsfm.package import ModelPackage

INSTALL_HINT = (
    "pip install tensorrt-cu13 cuda-python (tensorrt-cu12 and cuda-python<13 for a CUDA 12 driver), "
    "on a machine with an NVIDIA GPU"
)


def unavailable() -> str | None:
    """Whether TensorRT and CUDA Python are installed (the GPU is the selection's question)."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed: {INSTALL_HINT}"
    try:
        found = importlib.util.find_spec("cuda.bindings") is not None
    except ModuleNotFoundError:  # no ``cuda`` package at all
        found = False
    return None if found else f"CUDA Python (cuda.bindings) is not installed: {INSTALL_HINT}"


def create(package: ModelPackage, selection: Selection, options: EngineOptions) -> TensorRTEngine:
    return TensorRTEngine(selection.path)


def require_tensorrt() -> tuple[ModuleType, ModuleType]:
    """``(tensorrt, cuda.bindings.runtime)``, once both import and CUDA sees a device; else an
    ``EngineError`` that says which of the three is missing. The plan builder checks the same."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(f"TensorRT is not installed ({exc}): {INSTALL_HINT}") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise EngineError(f"CUDA Python (cuda.bindings) is not installed ({exc}): {INSTALL_HINT}") from exc
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        why = "CUDA finds no device" if err == cudart.cudaError_t.cudaSuccess else f"CUDA says {_name(err)}"
        raise EngineError(f"no NVIDIA GPU ({why}): TensorRT needs one, with its driver")
    return tensorrt, cudart


def _name(err: Any) -> str:
    return getattr(err, "name", repr(err))


@functools.cache
def trt_logger() -> Any:
    """One logger per process: TensorRT warns when builders and runtimes are given different ones."""
    import tensorrt

    return tensorrt.Logger(tensorrt.Logger.WARNING)


def cuda_call(cudart: ModuleType, result: tuple, what: str) -> Any:
    """Unpack a CUDA Python ``(error, *values)`` result, raising ``EngineError`` on an error."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA {what} failed: {_name(err)}")
    return values[0] if values else None


def current_device_name(cudart: ModuleType) -> str:
    device = cuda_call(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    name = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties").name
    return name.decode().rstrip("\0") if isinstance(name, bytes) else str(name)


class _Buffer:
    """A pinned host array and a device allocation of the same size: pinned memory makes the
    copies asynchronous and runs them at full PCIe/NVLink speed (an input batch of 32 ViT-B crops
    is 19 MB)."""

    def __init__(self, cudart: ModuleType, size: int, dtype: np.dtype) -> None:
        self._cudart = cudart
        nbytes = size * dtype.itemsize
        self.host_ptr: int = cuda_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        pointer = ctypes.cast(self.host_ptr, ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype)))
        self.host: np.ndarray = np.ctypeslib.as_array(pointer, (size,))
        self.device: int = cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")

    def to_device(self, nbytes: int, stream: Any) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        copy = self._cudart.cudaMemcpyAsync(self.device, self.host_ptr, nbytes, kind, stream)
        cuda_call(self._cudart, copy, "copy to device")

    def to_host(self, nbytes: int, stream: Any) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        copy = self._cudart.cudaMemcpyAsync(self.host_ptr, self.device, nbytes, kind, stream)
        cuda_call(self._cudart, copy, "copy to host")

    def free(self) -> None:
        cuda_call(self._cudart, self._cudart.cudaFree(self.device), "cudaFree")
        cuda_call(self._cudart, self._cudart.cudaFreeHost(self.host_ptr), "cudaFreeHost")


class TensorRTEngine:
    """Runs a serialised TensorRT engine with one input whose first axis is the batch.

    The plan's optimisation profile 0 bounds the batch: larger batches run in slices of the
    profile's maximum, smaller ones than its minimum are padded with zeros. Buffers for the
    largest batch are allocated once, at load.
    """

    name = "tensorrt"
    selection: Selection | None = None

    def __init__(self, plan_path: str | Path) -> None:
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise EngineError(f"TensorRT plan not found: {self.path}")
        trt, self._cudart = require_tensorrt()
        self._runtime = trt.Runtime(trt_logger())
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} cannot load {self.path}: plans only load with the TensorRT version "
                f"and GPU model they were built with; rebuild it here with `fsfm export --tensorrt`"
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise EngineError(f"{self.path} has {len(inputs)} inputs; engines take models with one input")
        self.input_name: str = inputs[0]
        self.output_names: tuple[str, ...] = tuple(n for n in names if n != self.input_name)
        min_shape, _, max_shape = (tuple(s) for s in self._engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch = min_shape[0], max_shape[0]
        self.sample_shape: tuple[int, ...] = max_shape[1:]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}

        self._context = self._engine.create_execution_context()
        self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._context.set_input_shape(self.input_name, max_shape)  # output shapes at the largest batch
        self._buffers: dict[str, _Buffer] = {}
        for n in names:
            shape = max_shape if n == self.input_name else tuple(self._context.get_tensor_shape(n))
            self._buffers[n] = _Buffer(self._cudart, int(np.prod(shape)), self._dtypes[n])
            self._context.set_tensor_address(n, self._buffers[n].device)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        if batch.ndim != 1 + len(self.sample_shape) or batch.shape[1:] != self.sample_shape or not len(batch):
            dims = ", ".join(map(str, self.sample_shape))
            raise EngineError(f"{self.path.name} takes (B, {dims}) batches with B >= 1; got {batch.shape}")
        parts = [self._run_slice(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}

    def _run_slice(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        count = len(batch)
        padded = max(count, self.min_batch)
        source = self._buffers[self.input_name]
        staged = source.host[: padded * batch[0].size].reshape(padded, *self.sample_shape)
        staged[:count] = batch
        staged[count:] = 0
        if not self._context.set_input_shape(self.input_name, staged.shape):
            raise EngineError(f"{self.path.name}: batch {padded} is outside the plan's profile")
        source.to_device(staged.nbytes, self._stream)
        if not self._context.execute_async_v3(int(self._stream)):
            raise EngineError(f"TensorRT inference failed on {self.path.name} (batch {padded})")
        shapes = {n: tuple(self._context.get_tensor_shape(n)) for n in self.output_names}
        for n, shape in shapes.items():
            self._buffers[n].to_host(int(np.prod(shape)) * self._dtypes[n].itemsize, self._stream)
        cuda_call(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        # Copies: the pinned buffers are overwritten by the next call.
        return {n: self._buffers[n].host[: int(np.prod(s))].reshape(s)[:count].copy() for n, s in shapes.items()}

    def warmup(self, sample: np.ndarray, passes: int = 2) -> None:
        for _ in range(passes):
            self.run(sample)

    def close(self) -> None:
        """Free the buffers, the stream, then the context before the engine and the engine before
        the runtime (TensorRT's required order). Safe to call twice."""
        for buffer in self.__dict__.pop("_buffers", {}).values():
            buffer.free()
        if (stream := self.__dict__.pop("_stream", None)) is not None:
            cuda_call(self._cudart, self._cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
        for attribute in ("_context", "_engine", "_runtime"):
            self.__dict__.pop(attribute, None)

    def __del__(self) -> None:
        if "_cudart" in self.__dict__:
            try:
                self.close()
            except EngineError:
                pass  # at interpreter exit the CUDA runtime may already be unloading
