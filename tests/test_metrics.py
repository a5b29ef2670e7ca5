"""Metric functions against scikit-learn / SciPy (the official code's own definitions) and hand-computed
cases: AUC, AP, ROC, EER, TPR@FPR, HTER/APCER/BPCER/ACER, video-level aggregation, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as skm

from fsfm.package.manifest import Manifest
from tests.packages import make_tiny_package
from training.calibrate import calibrated_thresholds, operating_points, update_manifest
from training.metrics import (
    average_precision,
    binary_report,
    eer,
    error_rates,
    fpr_point,
    genuine_needed,
    grid_eer_threshold,
    roc_auc,
    roc_curve,
    threshold_for_fpr,
    tpr_at_fpr,
    video_scores,
    wilson_interval,
)


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels with both classes and scores with many ties (rounded to 1-3 decimals)."""
    n = int(rng.integers(6, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n) * 0.8 + 0.25 * labels, int(rng.integers(1, 4))) / 1.05
    return labels, scores


def test_ranking_metrics_agree_with_scikit_learn_and_the_official_eer() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        labels, scores = _random_case(rng)
        assert roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
        assert average_precision(labels, scores) == pytest.approx(
            skm.average_precision_score(labels, scores), abs=1e-12
        )
        fpr, tpr, thresholds = roc_curve(labels, scores)
        ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        np.testing.assert_allclose(thresholds[1:], ref_thr[1:])
        # the official DfD EER: brentq(1 - x - interp1d(fpr, tpr)(x)) on sklearn's ROC
        sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores)
        official = brentq(lambda x, roc=interp1d(sk_fpr, sk_tpr): 1.0 - x - roc(x), 0.0, 1.0)
        assert eer(labels, scores)[0] == pytest.approx(official, abs=1e-9)
        # FLIP's TPR@FPR=1%: the last TPR with FPR <= 0.01
        assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(sk_tpr[sk_fpr <= 0.01][-1])


def test_hand_computed_eer_and_error_rates() -> None:
    # genuine 0.1 0.2 0.3 0.6, attacks 0.4 0.7 0.8 0.9: at t = 0.5 one of each side is wrong
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    rate, threshold = eer(labels, scores)
    assert rate == pytest.approx(0.25)
    assert 0.4 <= threshold <= 0.6
    rates = error_rates(labels, scores, 0.5)
    assert (rates.apcer, rates.bpcer, rates.acer, rates.hter) == (0.25, 0.25, 0.25, 0.25)
    assert rates.accuracy == 0.75 and rates.balanced_accuracy == 0.75
    rates = error_rates(labels, scores, 0.65)  # 0.6 passes as genuine, 0.4 still missed
    assert (rates.apcer, rates.bpcer, rates.hter) == (0.25, 0.0, 0.125)
    assert roc_auc(labels, scores) == pytest.approx(15 / 16)  # only (0.6, 0.4) is mis-ordered
    # separable scores: EER 0, AUC 1; every genuine below every attack
    assert eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 0.0
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_hter_at_the_fas_protocol_grid_threshold() -> None:
    """FLIP's get_EER_states on P(live), recomputed here: the grid point minimising |FAR - FRR|."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)
    t = grid_eer_threshold(labels, scores, step=1e-3)
    best = min(
        np.linspace(0, 1, 1001),
        key=lambda g: abs(error_rates(labels, scores, g).apcer - error_rates(labels, scores, g).bpcer),
    )
    assert t == pytest.approx(best)
    rates = error_rates(labels, scores, t)
    assert rates.hter == pytest.approx((rates.apcer + rates.bpcer) / 2)
    assert abs(rates.hter - eer(labels, scores)[0]) < 0.03


def test_video_level_is_the_mean_frame_score_per_video() -> None:
    labels = [1, 1, 1, 0, 0, 1]
    scores = [0.9, 0.7, 0.2, 0.4, 0.0, 0.3]
    videos = ["b", "b", "a", "c", "c", "a"]
    result = video_scores(labels, scores, videos)
    assert result.ids == ["b", "a", "c"]  # first appearance
    np.testing.assert_allclose(result.scores, [0.8, 0.25, 0.2])
    assert result.labels.tolist() == [1, 1, 0] and result.frames.tolist() == [2, 2, 2]
    assert binary_report(result.labels, result.scores)["auc"] == 1.0
    with pytest.raises(ValueError, match="both genuine and attack"):
        video_scores([0, 1], [0.1, 0.2], ["v", "v"])


def test_threshold_for_fpr_meets_the_target_and_is_the_lowest() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1000)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    for target in (0.001, 0.01, 0.1, 0.5):
        threshold, fpr, tpr = threshold_for_fpr(labels, scores, target)
        assert fpr <= target and 0.0 <= threshold <= 1.0
        genuine = np.sort(scores[labels == 0])[::-1]
        allowed = int(np.floor(target * genuine.size))
        assert threshold > genuine[allowed]  # one more flagged genuine face would break the target
        assert tpr == pytest.approx((scores[labels == 1] >= threshold).mean())
        assert tpr == pytest.approx(tpr_at_fpr(labels, scores, target), abs=1e-12)


def test_operating_points_and_atomic_manifest_update(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    genuine = int((labels == 0).sum())
    points, unresolved = operating_points(labels, scores, [0.25, 0.1, 0.01])
    assert [p.name for p in points] == ["eer", "fpr_25pct", "fpr_10pct"]  # 10 / FPR genuine faces: 40, 100
    assert [(u.target_fpr, u.genuine, u.needed) for u in unresolved] == [(0.01, genuine, 1000)]
    assert points[0].fpr == pytest.approx(1 - points[0].tpr, abs=0.02)
    low, high = points[2].fpr_interval
    assert points[2].genuine == genuine and low < points[2].fpr <= 0.1 < high  # the rate and its uncertainty
    thresholds = calibrated_thresholds(labels, scores, [0.1, 0.01], default="eer")
    assert thresholds.default == points[0].threshold
    assert thresholds.for_target_fpr(0.1).fpr <= 0.1
    with pytest.raises(KeyError, match=f"{genuine} genuine faces cannot resolve it: 1000 needed"):
        thresholds.for_target_fpr(0.01)

    package = make_tiny_package(tmp_path / "models")
    updated = update_manifest(package.path, thresholds, {"calibration_auc": 0.93}, note="calibrated on test data")
    on_disk = Manifest.load(package.path)
    assert on_disk == updated
    assert on_disk.thresholds.for_target_fpr(0.1).threshold == thresholds.for_target_fpr(0.1).threshold
    assert on_disk.provenance.metrics["calibration_auc"] == 0.93
    assert "calibrated on test data" in (on_disk.provenance.notes or "")
    assert sorted(p.name for p in package.path.iterdir()) == ["manifest.json", "model.onnx"]  # no temp file left
    json.loads((package.path / "manifest.json").read_text())


def test_rates_at_a_fixed_fpr_need_enough_genuine_faces() -> None:
    """12 real faces cannot tell a 1 % FPR from a 0.1 % one: the point is unresolvable, not a threshold."""
    assert genuine_needed(0.01) == 1000 and genuine_needed(0.001) == 10000 and genuine_needed(0.25) == 40
    labels, scores = np.r_[np.zeros(12), np.ones(12)], np.r_[np.linspace(0, 0.5, 12), np.linspace(0.3, 1, 12)]
    point = fpr_point(labels, scores, 0.01)
    assert not point.resolvable and point.threshold is None and point.to_dict()["needed"] == 1000
    assert np.isnan(binary_report(labels, scores, target_fprs=(0.01,))["tpr_at_fpr_1pct"])
    low, high = wilson_interval(0, 12)
    assert low == 0.0 and 0.24 < high < 0.25  # 0 of 12 flagged: the FPR may still be up to 24 %
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
