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
    repository: Path, name: str = "tiny-deepfake", task: str = "deepfake", version: int = 1, seed: int = 0, **info: object
) -> ModelPackage:
    """Export a tiny random ViT as ``<repository>/<name>/<version>``; ``info`` sets PackageInfo fields."""
    return write_package(
        tiny_classifier(seed),
        PackageInfo(name=name, version=version, task=task, **info),
        repository,
        preset="fsfm_vit_tiny_patch16",
    )
