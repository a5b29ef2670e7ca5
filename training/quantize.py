"""``fsfm quantize``: add a package's faster variants, each with what it costs in accuracy measured on
held-out faces against the fp32 graph and recorded in the manifest, where ``select_variant`` reads
it (a lower precision is served automatically only within ``DriftTolerance``).

The variants (``VARIANTS``):

- ``onnxruntime-int8``: ONNX Runtime's dynamic quantisation. MatMul/Gemm weights stored as int8 per
  output channel, activations quantised per call from their own range; no calibration. Weights use
  7 bits (``reduce_range``): on x86 CPUs without VNNI the u8 x s8 multiply-add instruction can
  saturate at 8 bits (ONNX Runtime's quantisation guide).
- ``openvino-int8``: NNCF's static post-training quantisation of the graph for OpenVINO (transformer
  preset: SmoothQuant, fast bias correction), activation ranges calibrated on faces; saved as an
  OpenVINO IR (``model.int8.openvino.xml`` + ``.bin``). Int8 matrix products on VNNI and AMX.
- ``openvino-bf16``: no file; the record of what OpenVINO's bf16 hint does to the fp32 graph. Measured
  only on a CPU with bf16 instructions: elsewhere OpenVINO runs f32 and the drift would read as 0.

Each held-out set is scored by the fp32 graph on ONNX Runtime and by the variant on its engine; the
variant keeps, per set, both AUCs, the largest and mean score difference, the share of faces
labelled alike at the default threshold, and the engine and CPU it was measured on.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsfm.engines.registry import create_engine
from fsfm.engines.select import BF16_MATH, Host, Selection, cpu_model
from fsfm.face.crop import normalize
from fsfm.models.checkpoints import file_sha256
from fsfm.package.manifest import INT8_FILE, OPENVINO_INT8_FILE, QUANTIZE_VARIANTS, HeldOutCheck, Variant
from fsfm.package.repository import ModelPackage, load_package
from fsfm.scoring import label_for
from training.metrics import roc_auc

if TYPE_CHECKING:
    from training.finetune_data import FaceSource

INT8_METHOD = (
    "ONNX Runtime dynamic quantization (onnxruntime {version}): MatMul/Gemm weights int8 per output channel "
    "(7-bit range), activations uint8 quantised per call"
)
OPENVINO_INT8_METHOD = (
    "NNCF {nncf} static post-training quantization for OpenVINO {openvino} (transformer preset: SmoothQuant, "
    "fast bias correction), activations calibrated on {faces} faces of {sets}"
)
BF16_METHOD = "OpenVINO {openvino} bf16 inference-precision hint on the fp32 graph (no file of its own)"
CALIBRATION_FACES = 300  # NNCF's default subset size


@dataclass(frozen=True)
class VariantRecipe:
    """How one kind of variant is made and run: ``make`` writes its file (if any) and returns the
    variant without its held-out checks; ``unavailable`` says why it cannot be made here."""

    name: str
    engine: str
    unavailable: Callable[[Host], str | None]
    make: Callable[[ModelPackage, Sequence[FaceSource]], Variant]


def quantize_int8(source: Path, dest: Path) -> None:
    """Write the dynamic int8 quantisation of ``source`` to ``dest`` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = dest.with_name(f".{dest.name}.partial")
    try:
        quantize_dynamic(source, partial, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _make_onnxruntime_int8(package: ModelPackage, calibration: Sequence[FaceSource]) -> Variant:
    import onnxruntime

    quantize_int8(package.onnx_path, package.path / INT8_FILE)
    method = INT8_METHOD.format(version=onnxruntime.__version__)
    return Variant(precision="int8", file=INT8_FILE, method=method, sha256=file_sha256(package.path / INT8_FILE))


def calibration_tensors(package: ModelPackage, sources: Sequence[FaceSource], limit: int) -> list[np.ndarray]:
    """Up to ``limit`` normalised faces (1, 3, S, S) spread evenly over ``sources``, as evaluated."""
    from training.augment import eval_pixels

    manifest = package.manifest
    picks = [(source, i) for source in sources for i in range(len(source))]
    step = max(1, len(picks) // limit)
    tensors = []
    for source, index in picks[::step][:limit]:
        pixels = eval_pixels(source.image(index), manifest.crop.size, "resize")[None]
        tensors.append(normalize(pixels, manifest.normalization))
    return tensors


def quantize_openvino_int8(source: Path, dest: Path, calibration: Sequence[np.ndarray]) -> None:
    """NNCF's static int8 quantisation of ``source`` (ONNX) for OpenVINO, written as the IR ``dest``
    (.xml) and its weights beside it (.bin); both replaced atomically, weights first."""
    import nncf
    import openvino

    model = openvino.Core().read_model(str(source))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(list(calibration)),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )
    partial = dest.with_name(f".{dest.stem}.partial.xml")
    try:
        openvino.save_model(quantized, str(partial), compress_to_fp16=False)
        os.replace(partial.with_suffix(".bin"), dest.with_suffix(".bin"))
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_suffix(".bin").unlink(missing_ok=True)


def _make_openvino_int8(package: ModelPackage, calibration: Sequence[FaceSource]) -> Variant:
    import nncf
    import openvino

    tensors = calibration_tensors(package, calibration, CALIBRATION_FACES)
    dest = package.path / OPENVINO_INT8_FILE
    quantize_openvino_int8(package.onnx_path, dest, tensors)
    method = OPENVINO_INT8_METHOD.format(
        nncf=nncf.__version__,
        openvino=openvino.get_version(),
        faces=len(tensors),
        sets=", ".join(source.name for source in calibration),
    )
    return Variant(
        precision="int8", format="openvino-ir", file=OPENVINO_INT8_FILE, method=method, sha256=file_sha256(dest)
    )


def _make_openvino_bf16(package: ModelPackage, calibration: Sequence[FaceSource]) -> Variant:
    import openvino

    reference = package.manifest.reference_variant
    method = BF16_METHOD.format(openvino=openvino.get_version())
    return Variant(precision="bf16", file=reference.file, sha256=reference.sha256, method=method)


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(absent)} (pip install {' '.join(absent)})" if absent else None


def _bf16_unavailable(host: Host) -> str | None:
    if not BF16_MATH & host.cpu_features:
        return "this CPU has no bf16 instructions (AMX or AVX512-BF16): OpenVINO would run f32 and measure no drift"
    return _missing("openvino")


VARIANTS: dict[str, VariantRecipe] = {
    recipe.name: recipe
    for recipe in (
        VariantRecipe("onnxruntime-int8", "onnxruntime", lambda host: None, _make_onnxruntime_int8),
        VariantRecipe("openvino-int8", "openvino", lambda host: _missing("openvino", "nncf"), _make_openvino_int8),
        VariantRecipe("openvino-bf16", "openvino", _bf16_unavailable, _make_openvino_bf16),
    )
}
assert tuple(VARIANTS) == QUANTIZE_VARIANTS


def heldout_check(
    source: FaceSource, fp32: np.ndarray, variant: np.ndarray, package: ModelPackage, measured_on: str | None = None
) -> HeldOutCheck:
    labels = np.array([item.label for item in source.items])
    both_classes = 0 < labels.sum() < len(labels)
    threshold = package.manifest.thresholds.default
    same = [
        label_for(a, threshold, package.manifest) == label_for(b, threshold, package.manifest)
        for a, b in zip(fp32, variant, strict=False)
    ]
    diff = np.abs(fp32 - variant)
    return HeldOutCheck(
        set=source.name,
        faces=len(labels),
        auc_fp32=roc_auc(labels, fp32) if both_classes else None,
        auc_variant=roc_auc(labels, variant) if both_classes else None,
        max_abs_score_diff=float(diff.max()),
        mean_abs_score_diff=float(diff.mean()),
        label_agreement=float(np.mean(same)),
        measured_on=measured_on,
    )


def add_variants(
    package: ModelPackage,
    heldout: Sequence[FaceSource],
    names: Sequence[str] | None = None,
    calibration: Sequence[FaceSource] = (),
    batch_size: int = 64,
    workers: int = 0,
    host: Host | None = None,
) -> tuple[ModelPackage, dict[str, str]]:
    """Make the variants ``names`` (default: every one that can be made here), judge each on
    ``heldout`` (at least one set) and record them in the manifest. ``calibration`` (default: the
    held-out sets) calibrates static int8. Returns the package as written and, for the default
    choice, the variants not made here and why; a variant named that cannot be made raises."""
    from training.evaluate import PackageScorer, score_source

    if not heldout:
        raise ValueError("give at least one held-out set: a variant's accuracy is measured, not assumed")
    host = Host.detect() if host is None else host
    if unknown := [name for name in names or () if name not in VARIANTS]:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    wanted = [VARIANTS[name] for name in names] if names else list(VARIANTS.values())
    skipped = {recipe.name: why for recipe in wanted if (why := recipe.unavailable(host)) is not None}
    if names and skipped:
        raise ValueError("; ".join(f"{name} cannot be made here: {why}" for name, why in skipped.items()))
    fp32 = PackageScorer(package)
    reference = {source.name: score_source(fp32, source, batch_size, workers) for source in heldout}
    manifest = package.manifest
    for recipe in wanted:
        if recipe.name in skipped:
            continue
        variant = recipe.make(package, calibration or heldout)
        path = package.variant_path(variant)
        selection = Selection(recipe.engine, variant.precision, variant, path, f"fsfm quantize: {recipe.name}")
        engine = create_engine(package, selection)
        try:
            scorer = PackageScorer(package, engine=engine)
            measured_on = f"{recipe.engine} on {cpu_model()}"
            checks = [
                heldout_check(
                    source,
                    reference[source.name],
                    score_source(scorer, source, batch_size, workers),
                    package,
                    measured_on,
                )
                for source in heldout
            ]
        finally:
            engine.close()
        manifest = manifest.with_variant(variant.model_copy(update={"heldout": checks}))
        manifest.replace_in(package.path)
    return load_package(package.path), skipped
