"""``fsfm quantize``: add an int8 variant of a package's ONNX graph, with what it costs in accuracy
measured on held-out faces and recorded in the manifest.

The variant is ONNX Runtime's dynamic quantisation: MatMul/Gemm weights stored as int8 per output
channel, activations quantised per call from their own range; no calibration data is needed to
make it, only to judge it. Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI the
u8 x s8 multiply-add instruction can saturate at 8 bits (ONNX Runtime's quantisation guide).

Each held-out set is scored by the fp32 graph and by the variant, both on ONNX Runtime as served;
the manifest's int8 variant (``Manifest.variant("int8")``) keeps, per set, both AUCs, the largest
and mean score difference and the share of faces labelled alike at the default threshold. The
service runs the variant only when asked (``FSFM_PRECISION=int8``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsfm.models.checkpoints import file_sha256
from fsfm.package.manifest import INT8_FILE, HeldOutCheck, Variant
from fsfm.package.repository import ModelPackage, load_package
from fsfm.scoring import label_for
from training.metrics import roc_auc

if TYPE_CHECKING:
    from training.finetune_data import FaceSource

INT8_METHOD = (
    "ONNX Runtime dynamic quantization (onnxruntime {version}): MatMul/Gemm weights int8 per output channel "
    "(7-bit range), activations uint8 quantised per call"
)


def quantize_int8(source: Path, dest: Path) -> None:
    """Write the dynamic int8 quantisation of ``source`` to ``dest`` (atomically)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = dest.with_name(f".{dest.name}.partial")
    try:
        quantize_dynamic(source, partial, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def heldout_check(source: FaceSource, fp32: np.ndarray, int8: np.ndarray, package: ModelPackage) -> HeldOutCheck:
    labels = np.array([item.label for item in source.items])
    both_classes = 0 < labels.sum() < len(labels)
    threshold = package.manifest.thresholds.default
    same = [
        label_for(a, threshold, package.manifest) == label_for(b, threshold, package.manifest)
        for a, b in zip(fp32, int8, strict=False)
    ]
    diff = np.abs(fp32 - int8)
    return HeldOutCheck(
        set=source.name,
        faces=len(labels),
        auc_fp32=roc_auc(labels, fp32) if both_classes else None,
        auc_variant=roc_auc(labels, int8) if both_classes else None,
        max_abs_score_diff=float(diff.max()),
        mean_abs_score_diff=float(diff.mean()),
        label_agreement=float(np.mean(same)),
    )


def add_int8_to_package(
    package: ModelPackage, heldout: Sequence[FaceSource], batch_size: int = 64, workers: int = 0
) -> ModelPackage:
    """Quantise, judge on ``heldout`` (at least one set) and record the int8 variant in the manifest."""
    import onnxruntime

    from training.evaluate import PackageScorer, score_source

    if not heldout:
        raise ValueError("give at least one held-out set: the variant's accuracy is measured, not assumed")
    file = INT8_FILE
    quantize_int8(package.onnx_path, package.path / file)
    fp32, int8 = PackageScorer(package), PackageScorer(package, onnx_path=package.path / file)
    checks = [
        heldout_check(
            source,
            score_source(fp32, source, batch_size, workers),
            score_source(int8, source, batch_size, workers),
            package,
        )
        for source in heldout
    ]
    variant = Variant(
        precision="int8",
        format="onnx",
        file=file,
        method=INT8_METHOD.format(version=onnxruntime.__version__),
        sha256=file_sha256(package.path / file),
        heldout=checks,
    )
    package.manifest.with_variant(variant).replace_in(package.path)
    return load_package(package.path)
