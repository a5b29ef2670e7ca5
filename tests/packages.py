"""Tiny model packages exported by our own export code, for tests of everything that serves them."""

from __future__ import annotations

from pathlib import Path

import torch

from fsfm.models.config import ViTConfig, vit_preset
from fsfm.models.vit import ViTClassifier
from fsfm.package import ModelPackage
from fsfm.package.manifest import PackageInfo
from training.export import write_package

TINY_VIT: ViTConfig = vit_preset("fsfm_vit_tiny_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2)


def tiny_classifier(seed: int = 0, config: ViTConfig = TINY_VIT) -> ViTClassifier:
    """A random tiny ViT whose head is scaled up so its scores spread over (0, 1)."""
    torch.manual_seed(seed)
    model = ViTClassifier(config)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


def make_tiny_package(
    repository: Path,
    name: str = "tiny-deepfake",
    task: str = "deepfake",
    version: int = 1,
    seed: int = 0,
    **info: object,
) -> ModelPackage:
    """Export a tiny random ViT as ``<repository>/<name>/<version>``; ``info`` sets PackageInfo fields."""
    return write_package(
        tiny_classifier(seed),
        PackageInfo(name=name, version=version, task=task, **info),
        repository,
        preset="fsfm_vit_tiny_patch16",
    )


class _LogitsAndFeatures(torch.nn.Module):
    """A classifier with two named outputs: its logits and its pooled features (B, D)."""

    def __init__(self, model: ViTClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(images)
        return self.model.head(features), features


def make_two_output_package(repository: Path, name: str = "tiny-two-outputs", seed: int = 0) -> ModelPackage:
    """A tiny package whose ``model.onnx`` has two outputs, ``logits`` and ``features`` (its pooled
    features, (B, 32)): exported by our exporter, then re-exported with the second output."""
    from fsfm.models.checkpoints import file_sha256
    from fsfm.package.repository import load_package

    package = make_tiny_package(repository, name=name, seed=seed)
    size = TINY_VIT.img_size
    torch.onnx.export(
        _LogitsAndFeatures(tiny_classifier(seed)).eval(),
        (torch.zeros(2, 3, size, size),),
        str(package.onnx_path),
        input_names=["images"],
        output_names=["logits", "features"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        opset_version=package.manifest.onnx.opset,
        dynamo=False,
    )
    onnx = package.manifest.onnx.model_copy(update={"sha256": file_sha256(package.onnx_path)})
    package.manifest.model_copy(update={"onnx": onnx}).replace_in(package.path)
    return load_package(package.path)
