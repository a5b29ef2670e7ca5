"""``fsfm finetune``, ``fsfm evaluate`` and ``fsfm calibrate`` as plain Typer-annotated functions (the
``fsfm`` app registers them with ``app.command()(finetune)``); heavy imports happen inside the bodies.

Data sets are named as ``[format:]path[,key=value...]`` (``training.finetune_config.DataSpec``), e.g.
``ffpp:/data/FF++,split=train``, ``celebdf:/data/Celeb-DF-v2``, ``mcio:/data/MCIO,domain=msu,split=test``,
``/data/faces`` (a folder of ``real/`` + ``fake/``, a CSV, or an ``fsfm prepare`` output).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer


class Task(str, Enum):
    deepfake = "deepfake"
    liveness = "liveness"
    diffusion = "diffusion"


class DefaultThreshold(str, Enum):
    eer = "eer"
    fixed = "fixed"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _specs(texts: list[str] | None) -> list[Any]:
    from training.finetune_config import DataSpec

    return [DataSpec.parse(text) for text in texts or []]


def finetune(
    task: Optional[Task] = typer.Option(None, help="What the model learns to detect (sets the paper's recipe)."),
    pretrained: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Pretraining checkpoint (ours or the official FSFM checkpoint-N.pth), or a fine-tuned one to continue."),
    train: Optional[list[str]] = typer.Option(None, help="Training set as FORMAT:PATH,KEY=VALUE,... (format and options optional, e.g. ffpp:/data/FF++,split=train); repeat for several."),
    output_dir: Optional[Path] = typer.Option(None, help="Folder for config.json, log.jsonl and the checkpoints."),
    val: Optional[list[str]] = typer.Option(None, help="Validation set(s) for model selection and threshold calibration (default: hold out --val-fraction of the training videos)."),
    test: Optional[list[str]] = typer.Option(None, help="Test set(s) evaluated with the selected checkpoint when training ends (cross-dataset)."),
    sbi: Optional[bool] = typer.Option(None, "--sbi/--no-sbi", help="Train on self-blended pseudo-fakes made from the training sets' real faces."),
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="A fine-tuning config JSON (e.g. a previous run's config.json); options given here override it."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Epochs (default: the recipe's)."),
    batch_size: Optional[int] = typer.Option(None, min=2, help="Batch per process (default: the recipe's)."),
    accum_iter: Optional[int] = typer.Option(None, min=1, help="Gradient accumulation steps."),
    blr: Optional[float] = typer.Option(None, help="Base lr; lr = blr * effective batch / 256."),
    lr: Optional[float] = typer.Option(None, help="Absolute peak lr (overrides --blr)."),
    input_size: Optional[int] = typer.Option(None, min=16, help="Input side in pixels (default 224)."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads, when the checkpoint does not tell and the ViT is not a standard size."),
    val_fraction: Optional[float] = typer.Option(None, min=0.0, max=0.9, help="Share of training videos held out when no --val is given."),
    num_workers: Optional[int] = typer.Option(None, min=0, help="Data-loading processes."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    faces_cache: Optional[Path] = typer.Option(None, help="Where faces extracted from benchmark videos are kept (default: the fsfm cache)."),
    demo: Optional[bool] = typer.Option(None, "--demo/--no-demo", help="Mark the model as a demo, not fit for decisions."),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir from its checkpoint-last.pth."),
) -> None:
    """Fine-tune a pretrained FSFM encoder into a deepfake / liveness / diffusion detector with the
    paper's recipe. Single process, or DDP with ``torchrun -m training.finetune ...``."""
    from pydantic import ValidationError

    from training.finetune import finetune as run_finetune
    from training.finetune_config import FinetuneConfig
    from training.finetune_data import DataError

    data: dict[str, Any] = json.loads(config.read_text()) if config else {}
    given = {
        "task": task.value if task else None, "pretrained": pretrained, "output_dir": output_dir, "sbi": sbi,
        "epochs": epochs, "batch_size": batch_size, "accum_iter": accum_iter, "blr": blr, "lr": lr,
        "input_size": input_size, "num_heads": num_heads, "val_fraction": val_fraction, "num_workers": num_workers,
        "device": device, "seed": seed, "faces_cache": faces_cache, "demo": demo,
    }
    data |= {k: v for k, v in given.items() if v is not None}
    try:
        for key, texts in (("train", train), ("val", val), ("test", test)):
            if texts:
                data[key] = [s.model_dump(mode="json") for s in _specs(texts)]
        result = run_finetune(FinetuneConfig.model_validate(data), resume=resume)
    except (ValidationError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"selected {result.best_checkpoint} (epoch {result.best_epoch}): " + json.dumps({k: round(v, 4) for k, v in result.val_metrics.items()}))
        typer.echo(f"export it with: fsfm export --checkpoint {result.best_checkpoint} --name <name> --task {data['task']}")


def _summary(report: dict[str, Any]) -> list[str]:
    def pct(value: Any) -> str:
        return "   -  " if value is None else f"{100 * value:6.2f}"

    lines = [f"{'set':32s} {'AUC':>6s} {'EER':>6s} {'vAUC':>6s} {'vEER':>6s} {'HTER':>6s}"]
    for name, entry in report["sets"].items():
        frame, video = entry["frame"], entry.get("video", {})
        lines.append(f"{name[:32]:32s} {pct(frame.get('auc'))} {pct(frame.get('eer'))} {pct(video.get('auc'))} {pct(video.get('eer'))} {pct(frame.get('hter'))}")
    return lines


def evaluate(
    test: list[str] = typer.Option(..., help="Test set as FORMAT:PATH,KEY=VALUE,... (e.g. celebdf:/data/Celeb-DF-v2); repeat for a cross-dataset run."),
    model: str = typer.Option(..., help="A model package (its folder, or NAME or NAME:VERSION in --models) or a fine-tuned checkpoint (.pth, ours or official)."),
    output_dir: Path = typer.Option(Path("evaluation"), help="Where report.json and the ROC PNGs go."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    task: Optional[Task] = typer.Option(None, help="Task (default: the package's; deepfake for checkpoints without metadata)."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Attack-score threshold for the error rates (default: the model's)."),
    target_fpr: list[float] = typer.Option([0.01], help="FPRs at which to report the TPR."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads of a checkpoint of non-standard size."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0, help="Image-decoding processes."),
    device: str = typer.Option("cpu", help="Device for checkpoints (packages run on ONNX Runtime)."),
    faces_cache: Optional[Path] = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Frame- and video-level AUC, EER, AP, accuracy (and HTER/APCER/BPCER/ACER, TPR@FPR) of a model
    on one or more test sets, as report.json plus ROC-curve PNGs."""
    from fsfm.assets import cache_dir
    from fsfm.package.repository import PackageError
    from training.evaluate import PackageScorer, evaluate_sets, open_scorer
    from training.finetune_data import DataError, open_source

    try:
        scorer = open_scorer(model, models, task.value if task else "deepfake", num_heads, device)
        chosen_task = task.value if task else scorer.manifest.task if isinstance(scorer, PackageScorer) else "deepfake"
        cache = faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache) for spec in _specs(test)]
        report = evaluate_sets(scorer, sources, output_dir, chosen_task, threshold, target_fpr, batch_size, workers)
    except (PackageError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo("\n".join(_summary(report)))
    typer.echo(f"threshold {report['threshold']:.4f} ({report['threshold_source']}); report: {output_dir / 'report.json'}")


def calibrate(
    model: str = typer.Option(..., help="Model package: its folder, or NAME or NAME:VERSION in --models."),
    val: list[str] = typer.Option(..., help="Validation set(s) with real and fake (or live and spoof) faces."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    target_fpr: list[float] = typer.Option([0.01, 0.001], help="False-positive rates to calibrate operating points for."),
    default: DefaultThreshold = typer.Option(DefaultThreshold.eer, help="The package's default threshold: the EER point, or 0.5."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0),
    faces_cache: Optional[Path] = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Choose thresholds on validation data (EER point, fixed-FPR operating points) and write them, with
    the validation metrics, into the package's manifest."""
    from fsfm.assets import cache_dir
    from fsfm.package.repository import ModelRepository, PackageError
    from training.calibrate import calibrate_package
    from training.finetune_data import DataError, open_source

    try:
        folder = Path(model) if Path(model).is_dir() else ModelRepository(models).get(model).path
        cache = faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache) for spec in _specs(val)]
        manifest = calibrate_package(folder, sources, target_fpr, default.value, batch_size, workers)
    except (PackageError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"{manifest.ref}: default threshold {manifest.thresholds.default:.4f}")
    for point in manifest.thresholds.operating_points:
        typer.echo(f"  {point.name:12s} threshold {point.threshold:.4f}  fpr {point.fpr:.4f}  tpr {point.tpr:.4f}")


def quantize(
    model: str = typer.Option(..., help="Model package: its folder, or NAME or NAME:VERSION in --models."),
    heldout: list[str] = typer.Option(..., help="Held-out set(s) (as --val of calibrate) on which the int8 variant is judged against fp32."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0),
    faces_cache: Optional[Path] = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Add an int8 ONNX variant (ONNX Runtime dynamic quantisation) to a package, with its accuracy
    against fp32 on held-out faces recorded in the manifest; `fsfm serve --precision int8` serves it."""
    from fsfm.assets import cache_dir
    from fsfm.package.repository import ModelRepository, PackageError, load_package
    from training.finetune_data import DataError, open_source
    from training.quantize import add_int8_to_package

    try:
        package = load_package(Path(model)) if Path(model).is_dir() else ModelRepository(models).get(model)
        cache = faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache) for spec in _specs(heldout)]
        package = add_int8_to_package(package, sources, batch_size, workers)
    except (PackageError, DataError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    info = package.manifest.variant("int8")
    assert info is not None
    typer.echo(f"{package.manifest.ref}: wrote {package.variant_path(info)}")
    for check in info.heldout:
        auc = "" if check.auc_fp32 is None else f"AUC fp32 {check.auc_fp32:.4f} int8 {check.auc_variant:.4f}, "
        typer.echo(f"  {check.set}: {check.faces} faces, {auc}max |score diff| {check.max_abs_score_diff:.4f}, "
                   f"labels agree on {check.label_agreement:.1%}")
