"""From logits to what users read: attack scores, labels, thresholds and the verdict."""

from __future__ import annotations

import numpy as np

from fsfm.package.manifest import Manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def attack_scores(logits: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(N, classes) logits -> (N,) probability of the attack class (fake / spoof / generated)."""
    return softmax(logits.astype(np.float64))[:, manifest.classes.attack_index]


def resolve_threshold(
    manifest: Manifest, threshold: float | None = None, target_fpr: float | None = None
) -> tuple[float, str]:
    """The threshold a request gets, and where it came from ("request", an operating point's name,
    or "default"). Asking for both a threshold and a target FPR is ambiguous: ValueError."""
    if threshold is not None and target_fpr is not None:
        raise ValueError("give either threshold or target_fpr, not both")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return float(threshold), "request"
    if target_fpr is not None:
        point = manifest.thresholds.for_target_fpr(target_fpr)
        return point.threshold, point.name
    return manifest.thresholds.default, "default"


def label_for(score: float, threshold: float, manifest: Manifest) -> str:
    return manifest.classes.attack_label if score >= threshold else manifest.classes.genuine_label
