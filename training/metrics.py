"""Detection metrics the field reports (docs/finetuning.md, "Metrics"), in numpy, with one convention throughout:

* ``labels``: 1 = attack (fake / spoof / generated), 0 = genuine (real / live);
* ``scores``: the attack score, higher = more suspicious (the service's ``score``);
* a sample is called an attack when ``score >= threshold`` (as ``fsfm.scoring.label_for``).

The papers score P(real) with real as the positive class. AUC, EER and accuracy do not depend on which
class is called positive (swap both the labels and the score direction), so the numbers are the
same; AP does depend on it, and is reported with the attack as the positive class.

The face anti-spoofing error rates (ISO/IEC 30107-3 names): APCER = attacks accepted as genuine,
BPCER = genuine rejected as attacks, ACER = their mean; HTER = (FAR + FRR) / 2, the same quantity
under the older names (FAR = APCER, FRR = BPCER) when there is one attack class, which is all a
binary label can say. Video level = the mean of a video's frame scores (the FSFM paper's DfD and FAS
protocols, arXiv 2412.12032).

A rate at a fixed FPR is only measured where the set can resolve it (``fpr_point``): at least
``MIN_FALSE_POSITIVES`` genuine faces expected above the threshold, i.e. 10 / FPR genuine faces (1,000 for
1 %). With fewer, "1 % FPR" is a threshold above every genuine face, the same for every finer target, and
says nothing about new faces; such points are reported as unresolvable. Measured rates carry their 95 %
Wilson score interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

ArrayLike = Sequence[float] | np.ndarray  # labels (0/1) or scores, one per sample


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (genuine) or 1 (attack)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _both_classes(y: np.ndarray) -> None:
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("ranking metrics need both genuine and attack samples")


def _ranked_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) when flagging every sample scoring >= each
    distinct score, from the highest score down; and those scores."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # index of the last sample per distinct score
    tp = np.cumsum(y)[last_of_value]
    return tp, (last_of_value + 1) - tp, s[last_of_value]


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, thresholds descending; the first point is
    (0, 0) at threshold +inf. As ``sklearn.metrics.roc_curve(drop_intermediate=False)``."""
    y, s = _check(labels, scores)
    _both_classes(y)
    tp, fp, thresholds = _ranked_counts(y, s)
    return np.r_[0.0, fp / (y.size - y.sum())], np.r_[0.0, tp / y.sum()], np.r_[np.inf, thresholds]


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids: ties count one half)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """AP = sum over thresholds of (recall_n - recall_{n-1}) * precision_n, attack = positive
    (``sklearn.metrics.average_precision_score``)."""
    y, s = _check(labels, scores)
    _both_classes(y)
    tp, fp, _ = _ranked_counts(y, s)
    recall = np.r_[0.0, tp / y.sum()]
    return float(np.sum(np.diff(recall) * tp / (tp + fp)))


def eer(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold, by root-finding on the linearly interpolated ROC (the
    official ``brentq(1 - x - interp1d(fpr, tpr)(x))``), done exactly on the polyline.

    The threshold is interpolated between the two ROC points around the crossing; a crossing on the
    first segment (threshold +inf) takes the first finite threshold."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    gap = (1.0 - tpr) - fpr  # FNR - FPR: non-increasing along the curve, 1 at (0, 0), -1 at (1, 1)
    i = int(np.flatnonzero(gap >= 0)[-1])  # the crossing lies on the segment (i, i + 1)
    t = gap[i] / (gap[i] - gap[i + 1])
    rate = fpr[i] + t * (fpr[i + 1] - fpr[i])
    upper = thresholds[i] if np.isfinite(thresholds[i]) else thresholds[i + 1]
    return float(rate), float(upper + t * (thresholds[i + 1] - upper))


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, target_fpr: float) -> float:
    """The highest TPR among ROC points with FPR <= ``target_fpr`` (FLIP's TPR@FPR)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= target_fpr + 1e-12].max())


def threshold_for_fpr(labels: ArrayLike, scores: ArrayLike, target_fpr: float) -> tuple[float, float, float]:
    """The lowest threshold whose FPR on these samples is <= ``target_fpr`` -> (threshold, fpr, tpr).

    The threshold is placed halfway between the highest genuine score that must be let through and
    the next higher score, not on a sample, so it does not hinge on one sample's exact value; scores
    are probabilities, so it stays in [0, 1]."""
    y, s = _check(labels, scores)
    genuine = np.sort(s[y == 0])[::-1]
    if genuine.size == 0:
        raise ValueError("choosing a threshold for an FPR needs genuine samples")
    allowed = int(np.floor(target_fpr * genuine.size + 1e-9))  # genuine samples that may score >= t
    if allowed >= genuine.size:
        threshold = float(s.min())
    else:
        must_pass = genuine[allowed]
        above = s[s > must_pass]
        threshold = float((must_pass + above.min()) / 2) if above.size else float(np.nextafter(must_pass, np.inf))
    flagged = s >= threshold
    fpr = float(flagged[y == 0].mean())
    tpr = float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")
    return threshold, fpr, tpr


MIN_FALSE_POSITIVES = 10


def genuine_needed(target_fpr: float) -> int:
    """Genuine faces a set needs to resolve ``target_fpr``: ``MIN_FALSE_POSITIVES`` expected above the threshold."""
    return math.ceil(MIN_FALSE_POSITIVES / target_fpr - 1e-9)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for z = 1.96); (0, 1) for no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class FprPoint:
    """The operating point for one target FPR on one set, or why the set cannot resolve it (``threshold``
    and the rates are None then)."""

    target_fpr: float
    genuine: int
    attacks: int
    needed: int
    threshold: float | None = None
    fpr: float | None = None
    tpr: float | None = None
    fpr_interval: tuple[float, float] | None = None
    tpr_interval: tuple[float, float] | None = None

    @property
    def resolvable(self) -> bool:
        return self.genuine >= self.needed

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"resolvable": self.resolvable}


def fpr_point(labels: ArrayLike, scores: ArrayLike, target_fpr: float) -> FprPoint:
    """``threshold_for_fpr`` with its counts and intervals, when the set has ``genuine_needed`` genuine faces."""
    y, _ = _check(labels, scores)
    genuine, attacks = int((y == 0).sum()), int(y.sum())
    point = FprPoint(target_fpr, genuine, attacks, genuine_needed(target_fpr))
    if not point.resolvable:
        return point
    threshold, fpr, tpr = threshold_for_fpr(labels, scores, target_fpr)
    return replace(
        point,
        threshold=threshold,
        fpr=fpr,
        tpr=tpr,
        fpr_interval=wilson_interval(round(fpr * genuine), genuine),
        tpr_interval=wilson_interval(round(tpr * attacks), attacks) if attacks else None,
    )


def grid_eer_threshold(labels: ArrayLike, scores: ArrayLike, step: float = 1e-4) -> float:
    """The FAS protocol's EER threshold (FLIP / few_shot_fas ``get_EER_states``): the point of a
    0..1 grid where |APCER - BPCER| is smallest (scores must be probabilities)."""
    y, s = _check(labels, scores)
    grid = np.linspace(0.0, 1.0, int(round(1.0 / step)) + 1)
    sorted_attack, sorted_genuine = np.sort(s[y == 1]), np.sort(s[y == 0])
    apcer = np.searchsorted(sorted_attack, grid, side="left") / max(sorted_attack.size, 1)
    bpcer = 1.0 - np.searchsorted(sorted_genuine, grid, side="left") / max(sorted_genuine.size, 1)
    return float(grid[int(np.argmin(np.abs(apcer - bpcer)))])


@dataclass(frozen=True)
class ErrorRates:
    """Decisions at one threshold (attack iff score >= threshold)."""

    threshold: float
    apcer: float  # attacks accepted as genuine (= FAR in FAS papers, = FNR of the attack class)
    bpcer: float  # genuine rejected as attacks (= FRR, = FPR of the attack class)
    acer: float
    hter: float
    accuracy: float
    balanced_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def error_rates(labels: ArrayLike, scores: ArrayLike, threshold: float) -> ErrorRates:
    y, s = _check(labels, scores)
    flagged = s >= threshold
    apcer = float((~flagged[y == 1]).mean()) if (y == 1).any() else float("nan")
    bpcer = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    half = (apcer + bpcer) / 2
    return ErrorRates(
        threshold=float(threshold),
        apcer=apcer,
        bpcer=bpcer,
        acer=half,
        hter=half,
        accuracy=float((flagged == (y == 1)).mean()),
        balanced_accuracy=1.0 - half,
    )


@dataclass(frozen=True)
class VideoScores:
    ids: list[str]
    labels: np.ndarray  # (V,) int
    scores: np.ndarray  # (V,) mean frame score
    frames: np.ndarray  # (V,) frames per video


def video_scores(labels: ArrayLike, scores: ArrayLike, video_ids: Sequence[str]) -> VideoScores:
    """Frame scores -> one score per video (the mean), in order of first appearance. A video whose
    frames carry different labels is an error in the data, not something to average."""
    y, s = _check(labels, scores)
    if len(video_ids) != y.size:
        raise ValueError(f"{len(video_ids)} video ids for {y.size} scores")
    ids, index = np.unique(np.asarray(video_ids, dtype=object).astype(str), return_inverse=True)
    frames = np.bincount(index, minlength=ids.size)
    totals = np.bincount(index, weights=s, minlength=ids.size)
    attack_frames = np.bincount(index, weights=y, minlength=ids.size)
    mixed = (attack_frames > 0) & (attack_frames < frames)
    if mixed.any():
        raise ValueError(f"videos with both genuine and attack frames: {ids[mixed][:5].tolist()}")
    first = np.full(ids.size, y.size)
    np.minimum.at(first, index, np.arange(y.size))
    order = np.argsort(first, kind="stable")
    return VideoScores(
        ids=ids[order].tolist(),
        labels=(attack_frames[order] > 0).astype(np.int64),
        scores=totals[order] / frames[order],
        frames=frames[order],
    )


def binary_report(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float = 0.5,
    target_fprs: Sequence[float] = (0.01,),
) -> dict[str, float]:
    """Everything for one set of samples: counts, AUC, EER (+ threshold), AP, TPR at the target FPRs (NaN
    where the set cannot resolve the FPR, ``fpr_point``), and the error rates / accuracies at ``threshold``.
    Ranking metrics are NaN with one class only."""
    y, s = _check(labels, scores)
    report: dict[str, float] = {"samples": int(y.size), "attacks": int(y.sum()), "genuine": int(y.size - y.sum())}
    if 0 < y.sum() < y.size:
        rate, eer_threshold = eer(y, s)
        report |= {
            "auc": roc_auc(y, s),
            "eer": rate,
            "eer_threshold": eer_threshold,
            "ap": average_precision(y, s),
        }
        for target in target_fprs:
            resolvable = y.size - y.sum() >= genuine_needed(target)
            report[f"tpr_at_fpr_{target * 100:g}pct"] = tpr_at_fpr(y, s, target) if resolvable else float("nan")
    else:
        report |= {"auc": float("nan"), "eer": float("nan"), "ap": float("nan")}
    report |= error_rates(y, s, threshold).to_dict()
    return report
