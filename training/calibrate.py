"""Calibration: thresholds on the attack score chosen on validation scores, and written where the
service reads them (a package manifest's ``thresholds`` and ``provenance.metrics``).

Operating points: ``eer`` (the threshold where the false-positive and false-negative rates meet) and
``fpr_<x>pct`` for each target false-positive rate the validation set can resolve (the lowest threshold
whose FPR on the validation set is <= the target; FPR = share of genuine faces flagged; resolvable = at
least 10 / FPR genuine faces, ``training.metrics.fpr_point``). Targets it cannot resolve are recorded as
``unresolved``, with the count they would need. The package's default threshold is the EER point (or 0.5
on request). Each point records the FPR/TPR it achieved on the validation set, the face counts and the
rates' 95 % Wilson intervals; on new data they hold only as far as that data resembles the validation set.

A model whose validation AUC stays near chance (``chance_verdict``) learned nothing worth serving: a
fine-tuning run ending so fails, and ``fsfm export`` refuses its checkpoint, unless forced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fsfm.package.manifest import Manifest, OperatingPoint, Thresholds, UnresolvedPoint
from training.metrics import binary_report, eer, fpr_point, video_scores, wilson_interval

if TYPE_CHECKING:
    from training.finetune_data import FaceSource


CHANCE_MARGIN = 0.15  # an AUC below 0.65 is no detector, however many faces measured it
CHANCE_SIGMAS = 2.0  # ... nor one a small validation set cannot tell from 0.5


def chance_verdict(metrics: dict[str, float], prefix: str = "val") -> str | None:
    """Why the recorded ``<prefix>_auc`` says the model learned nothing, or None when it does not (or no
    AUC was recorded). Near chance = below 0.5 + max(``CHANCE_MARGIN``, ``CHANCE_SIGMAS`` x the AUC's
    standard deviation for a chance model on that many genuine and attack faces, sqrt((n0 + n1 + 1) /
    (12 n0 n1)), the Mann-Whitney null). An AUC far below 0.5 (labels learned the wrong way round) fails too."""
    auc = metrics.get(f"{prefix}_auc")
    if auc is None:
        return None
    samples = metrics.get(f"{prefix}_samples", 2.0)
    genuine = metrics.get(f"{prefix}_genuine", samples / 2)
    attacks = metrics.get(f"{prefix}_attacks", samples - genuine)
    sigma = math.sqrt((genuine + attacks + 1) / (12 * max(genuine, 1) * max(attacks, 1)))
    floor = 0.5 + max(CHANCE_MARGIN, CHANCE_SIGMAS * sigma)
    if auc >= floor:
        return None
    return (
        f"validation AUC {auc:.3f} on {genuine:.0f} genuine + {attacks:.0f} attack faces is near chance "
        f"(needs >= {floor:.3f}): the model did not learn to tell them apart"
    )


def point_name(target_fpr: float) -> str:
    """0.01 -> ``fpr_1pct``, 0.001 -> ``fpr_0.1pct``."""
    return f"fpr_{target_fpr * 100:g}pct"


def operating_points(
    labels: np.ndarray, scores: np.ndarray, target_fprs: Sequence[float]
) -> tuple[list[OperatingPoint], list[UnresolvedPoint]]:
    """The EER point and the resolvable fixed-FPR points, and the target FPRs the set cannot resolve."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    _, eer_threshold = eer(labels, scores)
    threshold = float(np.clip(eer_threshold, 0.0, 1.0))
    flagged = scores >= threshold
    genuine, attacks = int((labels == 0).sum()), int((labels == 1).sum())
    false_positives, true_positives = int(flagged[labels == 0].sum()), int(flagged[labels == 1].sum())
    points = [
        OperatingPoint(
            name="eer",
            threshold=threshold,
            fpr=false_positives / genuine,
            tpr=true_positives / attacks,
            genuine=genuine,
            attacks=attacks,
            fpr_interval=wilson_interval(false_positives, genuine),
            tpr_interval=wilson_interval(true_positives, attacks),
        )
    ]
    unresolved = []
    for target in target_fprs:
        point = fpr_point(labels, scores, target)
        if not point.resolvable:
            unresolved.append(UnresolvedPoint(target_fpr=target, genuine=point.genuine, needed=point.needed))
            continue
        assert point.threshold is not None
        points.append(
            OperatingPoint(
                name=point_name(target),
                threshold=float(np.clip(point.threshold, 0.0, 1.0)),
                target_fpr=target,
                fpr=point.fpr,
                tpr=point.tpr,
                genuine=point.genuine,
                attacks=point.attacks,
                fpr_interval=point.fpr_interval,
                tpr_interval=point.tpr_interval,
            )
        )
    return points, unresolved


def calibrated_thresholds(
    labels: np.ndarray, scores: np.ndarray, target_fprs: Sequence[float], default: str = "eer"
) -> Thresholds:
    """Operating points from validation scores; ``default`` = ``eer`` (its threshold) or ``fixed`` (0.5)."""
    points, unresolved = operating_points(labels, scores, target_fprs)
    default_threshold = points[0].threshold if default == "eer" else 0.5
    return Thresholds(default=default_threshold, operating_points=points, unresolved=unresolved)


def calibration_metrics(
    labels: np.ndarray, scores: np.ndarray, videos: Sequence[str] | None, prefix: str = "val"
) -> dict[str, float]:
    """AUC, EER, AP and counts at frame level (and video level when videos have several frames),
    finite values only (manifests hold numbers)."""
    metrics = {
        f"{prefix}_{k}": v
        for k, v in binary_report(labels, scores).items()
        if k in ("samples", "genuine", "attacks", "auc", "eer", "ap")
    }
    if videos is not None:
        per_video = video_scores(labels, scores, videos)
        if per_video.frames.max() > 1 and 0 < per_video.labels.sum() < len(per_video.labels):
            report = binary_report(per_video.labels, per_video.scores)
            metrics |= {f"{prefix}_video_{k}": report[k] for k in ("samples", "auc", "eer")}
    return {k: float(v) for k, v in metrics.items() if np.isfinite(v)}


def update_manifest(
    package_dir: Path, thresholds: Thresholds, metrics: dict[str, float], note: str | None = None
) -> Manifest:
    """Rewrite ``manifest.json`` with new thresholds and metrics merged into the provenance, atomically
    (a reader sees the old or the new file, never a partial one)."""
    package_dir = Path(package_dir)
    manifest = Manifest.load(package_dir)
    provenance = manifest.provenance.model_copy(
        update={
            "metrics": {**manifest.provenance.metrics, **metrics},
            "notes": "; ".join(filter(None, [manifest.provenance.notes, note])) or None,
        }
    )
    updated = manifest.model_copy(update={"thresholds": thresholds, "provenance": provenance})
    updated.replace_in(package_dir)
    return updated


def calibrate_package(
    package_dir: Path,
    sources: Sequence[FaceSource],
    target_fprs: Sequence[float],
    default: str = "eer",
    batch_size: int = 64,
    workers: int = 0,
) -> Manifest:
    """Score validation sets with a package (ONNX Runtime, as served) and write the calibrated
    thresholds and validation metrics into its manifest."""
    from fsfm.package.repository import load_package
    from training.evaluate import PackageScorer, score_source

    scorer = PackageScorer(load_package(package_dir))
    labels = np.concatenate([[item.label for item in source.items] for source in sources])
    scores = np.concatenate([score_source(scorer, source, batch_size, workers) for source in sources])
    videos = [f"{source.name}/{item.video}" for source in sources for item in source.items]
    thresholds = calibrated_thresholds(labels, scores, target_fprs, default)
    metrics = calibration_metrics(labels, scores, videos, prefix="calibration")
    note = f"thresholds calibrated on {', '.join(s.name for s in sources)} ({len(labels)} faces)"
    return update_manifest(package_dir, thresholds, metrics, note)
