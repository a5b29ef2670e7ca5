"""Add the torch weights (``model.pt``) to a model package, for the development ``TorchEngine``.

The weights are checked against the package's ONNX graph before they are written, with the same
check and tolerance as the export, so a ``model.pt`` always computes what ``model.onnx`` computes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fsfm.engines.torch import TORCH_WEIGHTS_FILE
from fsfm.models.vit import ViTClassifier
from fsfm.package.repository import ModelPackage
from training.export import ExportError, max_abs_diff


def save_torch_weights(model: ViTClassifier, package: ModelPackage) -> Path:
    """Write ``model``'s state dict as ``<package>/model.pt`` (atomically) and return its path.

    Raises ``ExportError`` if ``model`` is not the package's architecture or does not compute what
    its ``model.onnx`` computes within the manifest's export tolerance.
    """
    arch = package.manifest.architecture
    if (model.config, model.global_pool, model.num_classes) != (arch.vit, arch.global_pool, arch.num_classes):
        raise ExportError(
            f"model ({model.config}, global_pool={model.global_pool}, {model.num_classes} classes) is not "
            f"{package.manifest.ref}'s architecture ({arch.vit}, global_pool={arch.global_pool}, "
            f"{arch.num_classes} classes)"
        )
    tolerance = package.manifest.onnx.tolerance
    diff = max_abs_diff(model, package.onnx_path)
    if not diff <= tolerance:
        raise ExportError(
            f"these weights differ from {package.manifest.ref}'s model.onnx by {diff:.3g} > {tolerance:.3g}: "
            f"not the weights it was exported from"
        )
    path = package.path / TORCH_WEIGHTS_FILE
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
