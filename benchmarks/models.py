"""The models the benchmarks run: random-weight FSFM classifiers of the standard presets, exported
by our own export code (ONNX + ``model.pt`` for the torch engine) and cached, since exporting
ViT-B/16 takes a while. Speed does not depend on the weights; the packages are marked as demos.

The head is drawn wider than a fresh fine-tuning head (std ``HEAD_STD`` instead of 2e-5): at 2e-5
every score sits at 0.5000 and the thinnest rounding flips a label, so the drift of a variant (which
decides whether ``auto`` may run it) would measure the threshold, not the variant."""

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


HEAD_STD = 0.05


def _description(name: str) -> str:
    """Also what tells a cached package made by other code apart: it is made again."""
    return f"random weights for benchmarks ({name}: {bench_config(name)}, head std {HEAD_STD}); not fit for decisions"


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
        manifest = package.manifest
        if (package.path / TORCH_WEIGHTS_FILE).is_file() and manifest.description == _description(name):
            return package
    except PackageError:
        pass
    import torch

    from fsfm.models.vit import ViTClassifier
    from training.export import write_package
    from training.package_torch import save_torch_weights

    torch.manual_seed(0)
    model = ViTClassifier(bench_config(name)).eval()
    torch.nn.init.normal_(model.head.weight, std=HEAD_STD)
    info = PackageInfo(name=package_name, version=1, task="deepfake", demo=True, description=_description(name))
    package = write_package(model, info, repository, preset=BENCH_MODELS[name][0], overwrite=True)
    save_torch_weights(model, package)
    return package


def with_measured_variants(package: ModelPackage, faces: Path) -> ModelPackage:
    """A benchmark package with every variant this machine can make (``fsfm quantize``), judged on
    the real faces of ``faces`` (a folder source), so that ``auto`` chooses for it as the service
    would for a quantised package. Made once per machine kind; the package is the benchmarks' own."""
    from fsfm.engines.select import cpu_model
    from training.finetune_data import folder_source
    from training.quantize import add_variants

    here = cpu_model()
    if any((check.measured_on or "").endswith(here) for v in package.manifest.variants for check in v.heldout):
        return package
    return add_variants(package, [folder_source(faces, "sample-faces")], batch_size=8)[0]
