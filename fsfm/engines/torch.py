"""PyTorch engine, for development: the package's classifier in eager mode, from its ``model.pt``.

``model.pt`` is optional in a package (the service serves ``model.onnx``); ``fsfm export
--with-torch`` writes it, checked against the ONNX graph (``training.package_torch``). torch is
imported when an engine is made, never at import time: the slim serving image has no torch.
Registered as ``torch``: it runs the fp32 reference with the weights of ``model.pt``, or the same
in bf16 autocast (matrix products in bf16, reductions and softmax in fp32): on an NVIDIA GPU, the
GPU path ``auto`` takes when the package has no TensorRT plan and records bf16's drift.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import numpy as np

from fsfm.engines.base import EngineError

if TYPE_CHECKING:
    from fsfm.engines.registry import EngineOptions
    from fsfm.engines.select import Selection
    from fsfm.package import ModelPackage

TORCH_WEIGHTS_FILE = "model.pt"


def unavailable() -> str | None:
    return None if importlib.util.find_spec("torch") else "PyTorch is not installed: install the `train` extra"


def create(package: ModelPackage, selection: Selection, options: EngineOptions) -> TorchEngine:
    """The selection is the fp32 reference graph; torch computes it from ``model.pt`` instead.
    ``options.threads`` is left alone: torch's thread count is per process, not per model."""
    return TorchEngine(package, precision=selection.precision)


class TorchEngine:
    """The ``ViTClassifier`` of a package's manifest with the weights of its ``model.pt``, in fp32 or bf16
    under ``torch.inference_mode()``, on CUDA when available (or on ``device``), else on the CPU.

    On CUDA, torch's own defaults apply (cuDNN may use TF32 for the patch convolution), so
    outputs can differ from ONNX Runtime's by more than on the CPU.
    """

    name = "torch"
    selection: Selection | None = None

    def __init__(self, package: ModelPackage, device: str | None = None, precision: str = "fp32") -> None:
        try:
            import torch
        except ImportError as exc:
            raise EngineError(f"the torch engine needs PyTorch ({exc}): install the `train` extra") from exc
        from fsfm.models.vit import ViTClassifier

        manifest = package.manifest
        weights = package.path / TORCH_WEIGHTS_FILE
        if not weights.is_file():
            raise EngineError(
                f"{manifest.ref} has no {TORCH_WEIGHTS_FILE} for the torch engine: re-export it with "
                f"`fsfm export --with-torch`, or call training.package_torch.save_torch_weights(model, package)"
            )
        arch = manifest.architecture
        model = ViTClassifier(arch.vit, num_classes=arch.num_classes, global_pool=arch.global_pool)
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # unpickling, I/O, missing keys and shape mismatches raise different types
            raise EngineError(f"cannot load {weights} into the manifest's architecture: {exc}") from exc
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:  # torch asserts when it was built without CUDA
            raise EngineError(f"cannot put the model on {self.device}: {exc}") from exc
        if precision not in ("fp32", "bf16"):
            raise EngineError(f"the torch engine runs fp32 and bf16, not {precision}")
        self.precision = precision
        self.input_name: str = manifest.onnx.input_name
        self.output_names: tuple[str, ...] = (manifest.onnx.output_name,)
        self._torch = torch

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        images = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":  # page-locked host memory: the copy to the GPU runs as DMA
            images = images.pin_memory().to(self.device, non_blocking=True)
        bf16 = self.precision == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = self.model(images)
        return {self.output_names[0]: logits.float().cpu().numpy()}

    def warmup(self, sample: np.ndarray, passes: int = 2) -> None:
        for _ in range(passes):
            self.run(sample)

    def close(self) -> None:
        """Drop the model; on CUDA also hand its cached device memory back to the driver."""
        if self.__dict__.pop("model", None) is not None and self.device.type == "cuda":
            self._torch.cuda.empty_cache()
