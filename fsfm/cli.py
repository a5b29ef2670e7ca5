"""The ``fsfm`` command line. Commands import their heavy dependencies (torch, the service) inside
their bodies, so ``fsfm analyze`` and ``fsfm serve`` work in an environment without PyTorch."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="fsfm",
    help="FSFM face security: deepfake, liveness and diffusion-forgery detection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class TaskName(str, Enum):
    deepfake = "deepfake"
    liveness = "liveness"
    diffusion = "diffusion"


class RetinaFaceFormat(str, Enum):
    ternaus = "ternaus"
    biubug6 = "biubug6"


class DetectorKind(str, Enum):
    mtcnn = "mtcnn"
    retinaface = "retinaface"


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and a non-zero exit: no traceback for errors the user can fix."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
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


@app.command()
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


@app.command()
def export(
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="Fine-tuned checkpoint (.pth)."),
    name: str = typer.Option(..., help="Model name in the repository."),
    task: TaskName = typer.Option(..., help="What the model detects."),
    version: int = typer.Option(1, min=1, help="Package version (an integer)."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    mean_std_file: Optional[Path] = typer.Option(
        None, exists=True, help="pretrain_ds_mean_std.txt to normalise with (default: beside the checkpoint)."
    ),
    num_heads: Optional[int] = typer.Option(None, help="Attention heads, when not a standard ViT-S/B/L/H."),
    threshold: Optional[float] = typer.Option(
        None, min=0.0, max=1.0, help="Default attack-score threshold (default: the checkpoint's calibration, else 0.5)."
    ),
    tolerance: float = typer.Option(1e-3, help="Max |torch - ONNX| allowed on the check batches."),
    demo: bool = typer.Option(False, help="Mark the package as a demo model, not fit for decisions."),
    overwrite: bool = typer.Option(False, help="Replace an existing package of the same version."),
    with_torch: bool = typer.Option(False, help="Also write model.pt for the development torch engine."),
    tensorrt: bool = typer.Option(False, help="Also build model.plan with TensorRT (needs TensorRT and an NVIDIA GPU)."),
    trt_precision: str = typer.Option("fp16", help="TensorRT precision: fp16 or fp32."),
    trt_batch: tuple[int, int, int] = typer.Option(
        (1, 8, 32), help="TensorRT optimisation profile: min, opt and max batch (match the batcher's max_batch_size)."
    ),
) -> None:
    """Export a fine-tuned checkpoint (official FSFM layout or ours) to a model package."""
    from fsfm.face.crop import Normalization
    from training.export import ExportError, export_checkpoint

    overrides: dict = {"demo": True} if demo else {}
    if threshold is not None:
        overrides["default_threshold"] = threshold
    try:
        package = export_checkpoint(
            checkpoint,
            models,
            name=name,
            version=version,
            task=task.value,
            normalization=Normalization.from_mean_std_file(mean_std_file) if mean_std_file else None,
            num_heads=num_heads,
            tolerance=tolerance,
            overwrite=overwrite,
            with_torch=with_torch,
            **overrides,
        )
        if tensorrt:
            from training.tensorrt_build import add_plan_to_package

            low, opt, high = trt_batch
            package = add_plan_to_package(package, precision=trt_precision, min_batch=low, opt_batch=opt, max_batch=high)
    except (ExportError, ValueError, KeyError, RuntimeError) as exc:  # EngineError is a RuntimeError
        fail(str(exc))
    typer.echo(
        f"exported {package.manifest.ref} to {package.path} "
        f"(max |torch - onnx| = {package.manifest.onnx.max_abs_diff:.2e})"
    )


from service.commands import serve  # noqa: E402  (its heavy imports are inside the command)

app.command()(serve)

from service.worker_command import worker  # noqa: E402  (its heavy imports are inside the command)
from training.commands import prepare, pretrain  # noqa: E402
from training.finetune_commands import calibrate, evaluate, finetune, quantize  # noqa: E402

for command in (worker, prepare, pretrain, finetune, evaluate, calibrate, quantize):
    app.command()(command)

from benchmarks.commands import bench_app  # noqa: E402  (its heavy imports are inside the commands)

app.add_typer(bench_app, name="bench")

if __name__ == "__main__":
    app()
