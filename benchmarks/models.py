"""The models the benchmarks run: random-weight FSFM classifiers of the standard presets, exported
by our own export code (ONNX + ``model.pt`` for the torch engine) and cached, since exporting
ViT-B/16 takes a while. Speed does not depend on the weights; the packages are marked as demos."""

from __future__ import annotations

from pathlib import Path

from fsfm.assets import cache_dir
from fsfm.engines.torch import TORCH_WEIGHTS_FILE
from fsfm.models.config import ViTConfig, vit_preset
from fsfm.package import ModelPackage, ModelRepository, PackageError
from fsfm.package.manifest import PackageInfo

# Name -> (preset, overrides). "vit-b16" is the FSFM paper's encoder; "vit-s16" the small config.
BENCH_MODELS: dict[str, tuple[str, dict[str, object]]] = {
    "vit-b16": ("fsfm_vit_base_patch16", {}),
    "vit-s16": ("fsfm_vit_small_patch16", {}),
    "vit-tiny16": ("fsfm_vit_tiny_patch16", {}),
    # For tests: a few layers at 64 px, milliseconds per face.
    "test-tiny": ("fsfm_vit_tiny_patch16", {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2}),
}


def bench_config(name: str) -> ViTConfig:
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(BENCH_MODELS)}")
    preset, overrides = BENCH_MODELS[name]
    return vit_preset(preset, **overrides)


def bench_repository() -> Path:
    return cache_dir() / "bench-models"


def ensure_bench_package(name: str, repository: Path | None = None) -> ModelPackage:
    """``<repository>/bench-<name>/1``, exported on first use (needs torch), reused afterwards."""
    repository = Path(repository) if repository is not None else bench_repository()
    repository.mkdir(parents=True, exist_ok=True)
    package_name = f"bench-{name}"
    try:
        package = ModelRepository(repository).get(package_name)
        if (package.path / TORCH_WEIGHTS_FILE).is_file() and package.manifest.architecture.vit == bench_config(name):
            return package
    except PackageError:
        pass
    import torch

    from fsfm.models.vit import ViTClassifier
    from training.export import write_package
    from training.package_torch import save_torch_weights

    torch.manual_seed(0)
    model = ViTClassifier(bench_config(name)).eval()
    info = PackageInfo(
        name=package_name,
        version=1,
        task="deepfake",
        demo=True,
        description=f"random weights for benchmarks ({name}); not fit for decisions",
    )
    package = write_package(model, info, repository, preset=BENCH_MODELS[name][0], overwrite=True)
    save_torch_weights(model, package)
    return package
