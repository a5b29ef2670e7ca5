"""``fsfm evaluate``: score face sets with a model package (ONNX Runtime, as served) or a checkpoint
(PyTorch), and report the field's metrics (docs/finetuning.md) per set, at frame and video level,
as ``report.json`` plus ROC curves (``roc.png`` for all sets together, ``roc-<set>.png`` each).

Per set: AUC, EER (+ its threshold), AP, TPR@FPR, and at the model's threshold APCER, BPCER, ACER,
HTER, accuracy and balanced accuracy (``training.metrics`` for the definitions); video level = the
mean frame score per video. Liveness adds the FAS protocol's numbers: HTER at the test set's own EER
threshold (a 0..1 grid, as FLIP / FSFM compute it: optimistic, since the threshold is fitted on the
test data) and the bona fide TPR at 1 % APCER (the FAS papers' TPR@FPR, live = positive).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fsfm.engines.base import Engine
from fsfm.face.crop import Normalization, normalize
from fsfm.models.checkpoints import classifier_from_state, load_checkpoint, model_state
from fsfm.models.config import ViTConfig
from fsfm.models.vit import ViTClassifier
from fsfm.package.manifest import DEFAULT_CLASSES, ClassSemantics
from fsfm.package.repository import ModelPackage, ModelRepository, PackageError, load_package
from fsfm.scoring import attack_scores, softmax
from training.augment import EvalMode, eval_pixels
from training.export import normalization_for
from training.finetune_data import FaceSource
from training.metrics import (
    binary_report,
    error_rates,
    fpr_point,
    grid_eer_threshold,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    video_scores,
)

REPORT_FILE = "report.json"


class Scorer(Protocol):
    """Turns face crops into attack scores. ``size``/``mode``: the evaluation crop it expects."""

    name: str
    size: int
    mode: EvalMode
    threshold: float
    threshold_source: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) evaluation crops -> (B,) attack scores."""
        ...


class PackageScorer:
    """A model package through ONNX Runtime (or the engine given), with its manifest's normalisation, class
    semantics and test transform (the crop's ``center_crop_from``)."""

    def __init__(
        self,
        package: ModelPackage,
        threads: int | None = None,
        onnx_path: Path | None = None,
        engine: Engine | None = None,
    ) -> None:
        """``onnx_path``: another graph of the package (e.g. its int8 variant) instead of ``model.onnx``;
        ``engine``: any engine made for the package (e.g. OpenVINO in bf16) instead of ONNX Runtime."""
        from fsfm.engines.onnxruntime import OnnxRuntimeEngine

        self.manifest = package.manifest
        self.name = self.manifest.ref
        self.size = self.manifest.architecture.vit.img_size
        self.mode: EvalMode = "resize" if self.manifest.crop.center_crop_from is None else "center_crop"
        self.engine = engine or OnnxRuntimeEngine(onnx_path or package.onnx_path, threads=threads)
        self.threshold, self.threshold_source = self.manifest.thresholds.default, "default"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        logits = self.engine.run(normalize(pixels, self.manifest.normalization))[self.manifest.onnx.output_name]
        return attack_scores(logits, self.manifest)


class TorchScorer:
    """A ``ViTClassifier`` in PyTorch (a fine-tuned checkpoint, or the model being trained)."""

    def __init__(
        self,
        model: ViTClassifier,
        normalization: Normalization,
        classes: ClassSemantics,
        name: str,
        mode: EvalMode = "resize",
        threshold: float = 0.5,
        threshold_source: str = "default",
        device: torch.device | str = "cpu",
    ) -> None:
        self.model, self.normalization, self.classes, self.name = model.eval(), normalization, classes, name
        self.size, self.mode, self.device = model.config.img_size, mode, torch.device(device)
        self.threshold, self.threshold_source = threshold, threshold_source

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(normalize(pixels, self.normalization)).to(self.device)
        logits = self.model(x).float().cpu().numpy()
        return softmax(logits.astype(np.float64))[:, self.classes.attack_index]


def checkpoint_scorer(path: Path, task: str, num_heads: int | None = None, device: str = "cpu") -> TorchScorer:
    """A fine-tuned checkpoint (ours with its ``fsfm`` metadata, or an official DfD/DiFF one) as a scorer.
    Official checkpoints get the task's official class order and FSFM's normalisation fallback."""
    checkpoint = load_checkpoint(path)
    meta: dict[str, Any] = checkpoint.get("fsfm", {}) if isinstance(checkpoint.get("fsfm"), dict) else {}
    config = ViTConfig.model_validate(meta["vit"]) if "vit" in meta else None
    model = classifier_from_state(model_state(checkpoint), config=config, num_heads=num_heads).to(device)
    normalization, _ = normalization_for(Path(path), meta)
    classes = ClassSemantics.model_validate(meta["classes"]) if "classes" in meta else DEFAULT_CLASSES[task]
    threshold = float(meta.get("thresholds", {}).get("default", 0.5))
    return TorchScorer(
        model, normalization, classes, Path(path).name, meta.get("eval_resize", "resize"), threshold, "default", device
    )


def open_scorer(
    model: str, models: Path, task: str, num_heads: int | None = None, device: str = "cpu"
) -> TorchScorer | PackageScorer:
    """``model`` = a checkpoint file (.pth/.pt/.tar), a package folder, or ``name[:version]`` in the
    ``models`` repository."""
    path = Path(model)
    if path.is_file():
        return checkpoint_scorer(path, task, num_heads, device)
    if path.is_dir():
        return PackageScorer(load_package(path))
    if not models.is_dir():
        raise PackageError(
            f"{model!r} is not a file or package folder, and the model repository {models} does not exist"
        )
    return PackageScorer(ModelRepository(models).get(model))


class _EvalCrops(Dataset):
    def __init__(self, source: FaceSource, size: int, mode: EvalMode) -> None:
        self.source, self.size, self.mode = source, size, mode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return eval_pixels(self.source.image(index), self.size, self.mode)


def score_source(
    scorer: Scorer, source: FaceSource, batch_size: int = 64, workers: int = 0, progress: bool = False
) -> np.ndarray:
    """Attack scores of every face of ``source``, in order (images decoded by ``workers`` processes)."""
    from tqdm import tqdm

    loader = DataLoader(
        _EvalCrops(source, scorer.size, scorer.mode), batch_size=batch_size, num_workers=workers, collate_fn=np.stack
    )
    scores = [scorer(batch) for batch in tqdm(loader, desc=source.name, disable=not progress, leave=False)]
    return np.concatenate(scores) if scores else np.zeros(0)


@dataclass
class ScoredSet:
    name: str
    labels: np.ndarray
    scores: np.ndarray
    videos: list[str]


def set_report(
    scored: ScoredSet, task: str, threshold: float, target_fprs: Sequence[float] = (0.01,)
) -> dict[str, Any]:
    """Frame- and video-level metrics of one scored set (see the module doc), and the frame-level operating
    point of each target FPR with its counts and intervals, or why the set cannot resolve it."""
    report: dict[str, Any] = {"frame": binary_report(scored.labels, scored.scores, threshold, target_fprs)}
    if 0 < scored.labels.sum() < len(scored.labels):
        report["fpr_points"] = [fpr_point(scored.labels, scored.scores, t).to_dict() for t in target_fprs]
    per_video = video_scores(scored.labels, scored.scores, scored.videos)
    if per_video.frames.max() > 1:
        report["video"] = binary_report(per_video.labels, per_video.scores, threshold, target_fprs)
        report["video"]["frames_per_video"] = float(per_video.frames.mean())
    if task == "liveness" and 0 < scored.labels.sum() < len(scored.labels):
        level = "video" if "video" in report else "frame"
        labels, scores = (per_video.labels, per_video.scores) if level == "video" else (scored.labels, scored.scores)
        protocol_threshold = grid_eer_threshold(labels, scores)
        report["fas_protocol"] = {
            "level": level,
            "test_eer_threshold": protocol_threshold,
            "hter_at_test_eer_threshold": error_rates(labels, scores, protocol_threshold).hter,
            "auc": roc_auc(labels, scores),
            # live as the positive class, FPR = spoofs accepted: the FAS papers' TPR@FPR=1%
            "bonafide_tpr_at_apcer_1pct": tpr_at_fpr(1 - labels, 1.0 - scores, 0.01),
        }
    return report


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """ROC curves (attack = positive) with their AUCs, log-free axes, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    for label, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {roc_auc(labels, scores) * 100:.2f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot([0, 1], [1, 0], color="0.7", lw=0.6, ls="--")  # the EER line
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="false-positive rate (genuine flagged)",
        ylabel="true-positive rate (attacks caught)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def evaluate_sets(
    scorer: Scorer,
    sources: Sequence[FaceSource],
    output_dir: Path,
    task: str,
    threshold: float | None = None,
    target_fprs: Sequence[float] = (0.01,),
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every set, write ``report.json`` and the ROC PNGs into ``output_dir``, return the report."""
    output_dir.mkdir(parents=True, exist_ok=True)
    used, used_source = (threshold, "given") if threshold is not None else (scorer.threshold, scorer.threshold_source)
    report: dict[str, Any] = {
        "model": scorer.name,
        "task": task,
        "threshold": used,
        "threshold_source": used_source,
        "eval_crop": {"size": scorer.size, "mode": scorer.mode},
        "conventions": "labels 1 = attack; scores = attack probability; attack iff score >= threshold",
        "sets": {},
    }
    frame_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    video_curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sources:
        scored = ScoredSet(
            source.name,
            np.array([i.label for i in source.items]),
            score_source(scorer, source, batch_size, workers, progress),
            [i.video for i in source.items],
        )
        entry = set_report(scored, task, used, target_fprs)
        report["sets"][source.name] = entry
        if 0 < scored.labels.sum() < len(scored.labels):
            frame_curves[source.name] = (scored.labels, scored.scores)
            if "video" in entry:
                per_video = video_scores(scored.labels, scored.scores, scored.videos)
                video_curves[source.name] = (per_video.labels, per_video.scores)
            curves = {"frames": frame_curves[source.name]} | (
                {"videos": video_curves[source.name]} if source.name in video_curves else {}
            )
            plot_roc(curves, output_dir / f"roc-{_safe(source.name)}.png", f"{scorer.name} on {source.name}")
    if frame_curves:
        plot_roc(frame_curves, output_dir / "roc.png", f"{scorer.name}: frame level")
    if video_curves:
        plot_roc(video_curves, output_dir / "roc-video.png", f"{scorer.name}: video level")
    report = _jsonable(report)
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _jsonable(value: Any) -> Any:
    """numpy scalars -> Python numbers; NaN (a metric undefined on one class) -> null."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
