"""Export a classifier to a model package: ``model.onnx`` (dynamic batch) + ``manifest.json``.

The ONNX graph is checked against the torch model on random batches of sizes 1 and 7 before the
package is written; the worst |difference| is recorded in the manifest and the export fails above
the tolerance, so a package on disk always computes what its checkpoint computed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

import fsfm
from fsfm.engines.onnxruntime import OnnxRuntimeEngine
from fsfm.face.crop import DLIB_BOX_TRANSFORM, CropSpec, Normalization, center_crop_side
from fsfm.models.checkpoints import classifier_from_state, file_sha256, load_checkpoint, model_state
from fsfm.models.config import ViTConfig
from fsfm.models.vit import ViTClassifier
from fsfm.package.manifest import Architecture, Manifest, OnnxInfo, PackageInfo, Provenance, Thresholds
from fsfm.package.repository import ModelPackage, load_package
from training.augment import EvalMode
from training.calibrate import chance_verdict
from training.flip import FlipClassifier, flip_classifier_from_state, is_flip_state

ONNX_OPSET = 17
TEST_TRANSFORMS = {  # by whether the crop is centre-cropped after resizing
    False: "plain resize of the face crop to the input size (the official paper's test log)",
    True: "resize to 256 + centre crop (the official README's --apply_simple_augment)",
}
CHECK_BATCH_SIZES = (1, 7)


class ExportError(RuntimeError):
    """The exported graph disagrees with the torch model, or the package cannot be written."""


def export_onnx(model: ViTClassifier, path: Path, opset: int = ONNX_OPSET) -> None:
    """Write ``model`` as ONNX with input ``images`` (B, 3, S, S) and output ``logits`` (B, classes)."""
    size = model.config.img_size
    dummy = torch.zeros(2, model.config.in_chans, size, size)
    torch.onnx.export(
        model.eval(),
        (dummy,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def max_abs_diff(model: ViTClassifier, onnx_path: Path, seed: int = 0) -> float:
    """Worst |torch - ONNX Runtime| over random standard-normal batches of sizes 1 and 7."""
    # Always on the CPU: a GPU provider's own numerics would be measured instead of the export's.
    engine = OnnxRuntimeEngine(onnx_path, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    size = model.config.img_size
    worst = 0.0
    for batch in CHECK_BATCH_SIZES:
        x = torch.randn(batch, model.config.in_chans, size, size, generator=generator)
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        got = engine.run(x.numpy())["logits"]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != torch {expected.shape} at batch {batch}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def write_package(
    model: ViTClassifier,
    info: PackageInfo,
    repository: Path,
    preset: str | None = None,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> ModelPackage:
    """Export ``model`` into ``<repository>/<name>/<version>/`` with a manifest made of ``info`` plus
    the measured architecture and ONNX sections. The folder appears only once complete."""
    dest = Path(repository) / info.name / str(info.version)
    if dest.exists() and not overwrite:
        raise ExportError(f"{dest} exists; choose another version or pass --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{info.version}-") as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        onnx_path = staging / "model.onnx"
        export_onnx(model, onnx_path)
        diff = max_abs_diff(model, onnx_path)
        if not diff <= tolerance:
            raise ExportError(f"ONNX output differs from torch by {diff:.3g} > tolerance {tolerance:.3g}")
        provenance = info.provenance.model_copy(update={"fsfm_version": fsfm.__version__})
        manifest = Manifest(
            **info.model_dump(exclude={"provenance", "crop"}),
            crop=info.crop.model_copy(update={"size": model.config.img_size}),  # crops are made for the input
            provenance=provenance,
            architecture=Architecture(
                preset=preset,
                vit=model.config,
                global_pool=model.global_pool,
                num_classes=model.num_classes,
                head="flip" if isinstance(model, FlipClassifier) else "linear",
            ),
            onnx=OnnxInfo(opset=ONNX_OPSET, max_abs_diff=diff, tolerance=tolerance, sha256=file_sha256(onnx_path)),
        )
        manifest.save(staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return load_package(dest)


MEAN_STD_FILE = "pretrain_ds_mean_std.txt"


def normalization_for(checkpoint_path: Path, meta: dict) -> tuple[Normalization, str]:
    """Our checkpoints carry their normalisation; official ones have ``pretrain_ds_mean_std.txt``
    beside them. Without either, FSFM's own fallback applies: the VGGFace2 statistics."""
    if "normalization" in meta:
        return Normalization.model_validate(meta["normalization"]), "checkpoint"
    beside = checkpoint_path.parent / MEAN_STD_FILE
    if beside.is_file():
        return Normalization.from_mean_std_file(beside), str(beside)
    return Normalization(), "VGGFace2 default (no pretrain_ds_mean_std.txt beside the checkpoint)"


def export_checkpoint(
    checkpoint_path: Path,
    repository: Path,
    name: str,
    version: int,
    task: str,
    normalization: Normalization | None = None,
    num_heads: int | None = None,
    tolerance: float = 1e-3,
    overwrite: bool = False,
    with_torch: bool = False,
    force: bool = False,
    test_transform: EvalMode | None = None,
    **info_overrides: object,
) -> ModelPackage:
    """A fine-tuned checkpoint (official DfD/DiFF layout, official FAS layout with its FLIP-style head, or ours
    with its ``fsfm`` metadata) -> a model package. ``info_overrides`` are ``PackageInfo`` fields (demo,
    description, crop, ...).
    ``with_torch`` also writes ``model.pt`` for the development torch engine. A checkpoint whose recorded
    validation AUC is near chance (``training.calibrate.chance_verdict``) is refused unless ``force``.

    Our checkpoints carry their crop convention; an official one gets FSFM's (1.3x square) around
    our boxes mapped onto dlib's, the boxes it was trained on. ``test_transform`` sets the crop's test
    transform (``resize``: the paper's plain resize, the default for official checkpoints; ``center_crop``:
    the README's resize 256 + centre crop 224), recorded in the manifest's crop and provenance notes."""
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    meta: dict = checkpoint.get("fsfm", {}) if isinstance(checkpoint.get("fsfm"), dict) else {}
    verdict = chance_verdict(meta.get("metrics", {}))
    if verdict is not None and not force:
        raise ExportError(f"{checkpoint_path}: {verdict}; --force exports it anyway")
    state = model_state(checkpoint)
    config = ViTConfig.model_validate(meta["vit"]) if "vit" in meta else None
    flip = is_flip_state(state)
    model = (
        flip_classifier_from_state(state, num_heads)
        if flip
        else classifier_from_state(state, config=config, num_heads=num_heads)
    )
    if normalization is None:
        normalization, norm_source = normalization_for(checkpoint_path, meta)
    else:
        norm_source = "given"
    fields: dict = {
        k: meta[k] for k in ("crop", "classes", "thresholds", "demo", "description", "licence") if k in meta
    }
    if "crop" not in meta:  # an official checkpoint: trained on dlib boxes enlarged 1.3x
        fields["crop"] = CropSpec(box_transform=DLIB_BOX_TRANSFORM)
    crop = CropSpec.model_validate(fields["crop"])
    if test_transform is not None:
        side = center_crop_side(model.config.img_size) if test_transform == "center_crop" else None
        crop = crop.model_copy(update={"center_crop_from": side})
    fields["crop"] = crop
    official_note = None
    if flip and isinstance(checkpoint.get("threshold"), float) and "default_threshold" not in info_overrides:
        # the official run's EER threshold on the live probability, chosen on its target-domain test set
        fields["thresholds"] = Thresholds(default=float(np.clip(1.0 - checkpoint["threshold"], 0.0, 1.0)))
        official_note = (
            f"default threshold: 1 - the official run's live-probability EER threshold {checkpoint['threshold']:.4f} "
            "(chosen on its test domain: optimistic)"
        )
    if "default_threshold" in info_overrides:  # keeps the calibrated operating points
        thresholds = Thresholds.model_validate(fields.get("thresholds", {}))
        fields["thresholds"] = thresholds.model_copy(update={"default": info_overrides.pop("default_threshold")})
    fields.update(info_overrides)
    provenance = Provenance(
        checkpoint=checkpoint_path.name,
        checkpoint_sha256=file_sha256(checkpoint_path),
        metrics=meta.get("metrics", {}),
        data=meta.get("data"),
        notes="; ".join(
            filter(
                None,
                [
                    f"normalisation from {norm_source}",
                    f"test transform: {TEST_TRANSFORMS[crop.center_crop_from is not None]}",
                    official_note,
                    verdict and f"exported anyway: {verdict}",
                ],
            )
        ),
    )
    info = PackageInfo(
        name=name, version=version, task=task, normalization=normalization, provenance=provenance, **fields
    )
    package = write_package(
        model, info, repository, preset=meta.get("preset"), tolerance=tolerance, overwrite=overwrite
    )
    if with_torch:
        from training.package_torch import save_torch_weights

        save_torch_weights(model, package)
    return package
