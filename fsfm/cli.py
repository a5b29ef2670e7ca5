"""The core's commands, ``fsfm setup`` and ``fsfm analyze``, as plain Typer-annotated functions; the
``fsfm`` app that mounts them beside training's, the service's and the benchmarks' commands is composed in
``fsfm_cli`` (this package imports none of those). Commands import their heavy dependencies inside their
bodies, so ``fsfm analyze`` works in an environment without PyTorch."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from fsfm.console import fail
from fsfm.package.manifest import TASKS

TaskName = Enum("TaskName", {task: task for task in TASKS}, type=str)  # one member per task


class RetinaFaceFormat(str, Enum):
    ternaus = "ternaus"
    biubug6 = "biubug6"


class DetectorKind(str, Enum):
    mtcnn = "mtcnn"
    retinaface = "retinaface"


def setup(
    retinaface: Optional[Path] = typer.Option(
        None, exists=True, dir_okay=False,
        help="Also convert a RetinaFace ResNet-50 weights file (.pth or the retinaface-pytorch zip) to ONNX.",
    ),
    retinaface_format: RetinaFaceFormat = typer.Option(
        RetinaFaceFormat.ternaus,
        help="Input convention the weights were trained with: ternaus (retinaface-pytorch zip: RGB, ImageNet "
        "mean/std) or biubug6 (Resnet50_Final.pth: BGR minus (104, 117, 123)).",
    ),
) -> None:
    """Prepare the detector weights once: fetch MTCNN's weights from PyPI (facenet-pytorch 2.6.0, MIT)
    and convert them to ONNX in the fsfm cache. Needs the training extra (torch)."""
    from fsfm.assets import ensure_mtcnn

    typer.echo(f"MTCNN ONNX weights: {ensure_mtcnn()}")
    if retinaface is not None:
        from fsfm.assets import cache_dir
        from fsfm.face.retinaface_convert import convert_retinaface

        out = cache_dir() / "detectors" / f"retinaface-{retinaface.stem}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_retinaface(retinaface, out, normalization=retinaface_format.value)
        typer.echo(f"RetinaFace ONNX weights: {out}  (use --detector retinaface --detector-weights {out})")


def analyze(
    paths: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, WebP)."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    task: TaskName = typer.Option(TaskName.deepfake, help="Which kind of model judges the faces."),
    model: Optional[str] = typer.Option(None, help="A model as name[:version] (default: the task's model)."),
    threshold: Optional[float] = typer.Option(None, help="Attack-score threshold (default: the manifest's)."),
    target_fpr: Optional[float] = typer.Option(None, help="Use the manifest's operating point for this FPR."),
    detect_only: bool = typer.Option(False, "--detect-only", help="Only detect faces; no model needed."),
    detector: DetectorKind = typer.Option(DetectorKind.mtcnn, help="Face detector."),
    detector_weights: Optional[Path] = typer.Option(None, help="Detector ONNX weights (folder for MTCNN)."),
    min_face_size: int = typer.Option(20, help="Smallest face side searched for, in pixels."),
    engine: str = typer.Option("auto", help="auto, or a registered engine: onnxruntime, tensorrt, torch, openvino."),
    precision: str = typer.Option("auto", help="auto, or the precision to run: fp32, int8, fp16, bf16."),
) -> None:
    """Detect faces and score them; JSON to stdout, one object per file. Files that cannot be read get
    an ``error`` object and a line on stderr, and the exit code is 1."""
    from fsfm.analysis import Analyzer
    from fsfm.engines.base import EngineError
    from fsfm.engines.loading import open_engine
    from fsfm.face.detector import DetectorConfig, create_detector
    from fsfm.imaging import ImageError, read_image_file
    from fsfm.package.repository import ModelRepository, PackageError
    from fsfm.scoring import resolve_threshold

    try:
        face_detector = create_detector(
            DetectorConfig(kind=detector.value, weights=detector_weights, min_face_size=min_face_size)
        )
        analyzer = Analyzer(face_detector)
        chosen = None
        if not detect_only:
            repo = ModelRepository(models)
            package = repo.get(model) if model else repo.default_for_task(task.value)
            chosen = resolve_threshold(package.manifest, threshold, target_fpr)[0]
            analyzer = Analyzer(face_detector, package.manifest, open_engine(package, engine, precision))
    except (PackageError, EngineError, FileNotFoundError, KeyError, ValueError) as exc:
        fail(str(exc).strip("'\""))

    results: list[dict] = []
    failures = 0
    for path in paths:
        try:
            analysis = analyzer.analyze(read_image_file(path), chosen)
        except ImageError as exc:
            failures += 1
            typer.echo(f"{path}: {exc}", err=True)
            results.append({"path": str(path), "error": {"code": exc.code, "message": str(exc)}})
            continue
        entry: dict = {"path": str(path), "faces": [f.to_json() for f in analysis.faces]}
        if analysis.verdict is not None and analyzer.manifest is not None:
            entry["model"] = analyzer.manifest.reference()
            entry["verdict"] = analysis.verdict.to_json()
        results.append(entry)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    if failures:
        raise typer.Exit(1)
