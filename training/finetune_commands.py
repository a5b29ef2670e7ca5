"""``fsfm finetune``, ``fsfm evaluate``, and the commands that write model packages (``fsfm export``,
``fsfm calibrate``, ``fsfm quantize``, ``fsfm pull``), as plain Typer-annotated functions (``fsfm_cli``
registers them with ``app.command()(finetune)``); heavy imports happen inside the bodies. ``finetune``'s flags map onto
``FinetuneConfig`` fields (``fsfm.flags``): unset flags leave the ``--config`` file's values, the task's
recipe or the configuration's defaults.

Entry point for several processes (DDP): ``torchrun --nproc-per-node N -m training.finetune_commands
finetune ...`` (the same options as ``fsfm finetune``).

Data sets are named as ``[format:]path[,key=value...]`` (``training.finetune_config.DataSpec``), e.g.
``ffpp:/data/FF++,split=train``, ``celebdf:/data/Celeb-DF-v2``, ``mcio:/data/MCIO,domain=msu,split=test``,
``/data/faces`` (a folder of ``real/`` + ``fake/``, a CSV, or an ``fsfm prepare`` output).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from fsfm.console import fail
from fsfm.flags import choices, config_option, literal_choices
from fsfm.package.manifest import QUANTIZE_VARIANTS, TASKS, Thresholds
from training.finetune_config import DataSpec, FinetuneConfig
from training.pull import OFFICIAL

Task = choices("Task", TASKS)
DefaultThreshold = literal_choices("DefaultThreshold", FinetuneConfig, "default_threshold")
Balance = literal_choices("Balance", FinetuneConfig, "balance")
TestTransform = literal_choices("TestTransform", FinetuneConfig, "eval_resize")
OfficialModel = choices("OfficialModel", OFFICIAL)


def _flag(field: str, help: str, *param_decls: str, **kwargs: Any) -> Any:
    return config_option(FinetuneConfig, field, help, *param_decls, **kwargs)


def _specs(texts: list[str] | None) -> list[DataSpec]:
    return [DataSpec.parse(text) for text in texts or []]


def finetune(
    task: Task | None = typer.Option(None, help="What the model learns to detect (sets the paper's recipe)."),
    pretrained: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Pretraining checkpoint (ours or the official FSFM checkpoint-N.pth), or a fine-tuned one to continue.",
    ),
    train: list[str] | None = typer.Option(
        None,
        help="Training set as FORMAT:PATH,KEY=VALUE,... (format and options optional, e.g. "
        "ffpp:/data/FF++,split=train); repeat for several.",
    ),
    output_dir: Path | None = typer.Option(None, help="Folder for config.json, log.jsonl and the checkpoints."),
    val: list[str] | None = typer.Option(
        None,
        help="Validation set(s) for model selection and threshold calibration (default: hold out "
        "--val-fraction of the training videos).",
    ),
    test: list[str] | None = typer.Option(
        None, help="Test set(s) evaluated with the selected checkpoint when training ends (cross-dataset)."
    ),
    sbi: bool | None = typer.Option(
        None, "--sbi/--no-sbi", help="Train on self-blended pseudo-fakes made from the training sets' real faces."
    ),
    config: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="A fine-tuning config JSON (e.g. a previous run's config.json); options given here override it.",
    ),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (default: the recipe's)."),
    batch_size: int | None = typer.Option(None, min=2, help="Batch per process (default: the recipe's)."),
    accum_iter: int | None = _flag(
        "accum_iter", "Gradient accumulation steps (default: those reaching the recipe's effective batch).", min=1
    ),
    effective_batch: int | None = typer.Option(
        None, min=1, help="Batch x GPUs x accumulation to reach (default: the official run's, by the recipe)."
    ),
    warmup_epochs: float | None = typer.Option(
        None,
        min=0.0,
        help="Warm-up epochs (default: the recipe's, cut to its share of the run when --epochs is shorter).",
    ),
    balance: Balance | None = typer.Option(
        None,
        help="Class balance (default: none, as the official runs; loss: inverse-frequency class weights; "
        "sampler: class-balanced batches; domain: equal live/spoof per domain, the liveness recipe's).",
    ),
    blr: float | None = typer.Option(None, help="Base lr; lr = blr * effective batch / 256."),
    lr: float | None = typer.Option(None, help="Absolute peak lr (overrides --blr)."),
    input_size: int | None = _flag("input_size", "Input side in pixels.", min=16),
    num_heads: int | None = typer.Option(
        None, min=1, help="Attention heads, when the checkpoint does not tell and the ViT is not a standard size."
    ),
    val_fraction: float | None = _flag(
        "val_fraction", "Share of training videos held out when no --val is given.", min=0.0, max=0.9
    ),
    num_workers: int | None = _flag("num_workers", "Data-loading processes.", min=0),
    device: str | None = _flag("device", "auto, cpu or cuda."),
    seed: int | None = _flag("seed", "Random seed."),
    faces_cache: Path | None = typer.Option(
        None, help="Where faces extracted from benchmark videos are kept (default: the fsfm cache)."
    ),
    demo: bool | None = _flag("demo", "Mark the model as a demo, not fit for decisions.", "--demo/--no-demo"),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir from its checkpoint-last.pth."),
    force: bool = typer.Option(
        False, help="Accept a model whose validation AUC ends near chance (the run fails otherwise)."
    ),
) -> None:
    """Fine-tune a pretrained FSFM encoder into a deepfake, liveness or diffusion detector.

    Follows the paper's recipe for the task (every departure is a flag, docs/finetuning.md). Single process,
    or DDP with `torchrun -m training.finetune_commands finetune` and the same options.
    """
    from pydantic import ValidationError

    from training.finetune import ChanceLevelError
    from training.finetune import finetune as run_finetune
    from training.finetune_data import DataError

    data: dict[str, Any] = json.loads(config.read_text()) if config else {}
    given = {
        "task": task.value if task else None,
        "pretrained": pretrained,
        "output_dir": output_dir,
        "sbi": sbi,
        "epochs": epochs,
        "batch_size": batch_size,
        "accum_iter": accum_iter,
        "effective_batch": effective_batch,
        "warmup_epochs": warmup_epochs,
        "balance": balance.value if balance else None,
        "blr": blr,
        "lr": lr,
        "input_size": input_size,
        "num_heads": num_heads,
        "val_fraction": val_fraction,
        "num_workers": num_workers,
        "device": device,
        "seed": seed,
        "faces_cache": faces_cache,
        "demo": demo,
    }
    data |= {k: v for k, v in given.items() if v is not None}
    try:
        for key, texts in (("train", train), ("val", val), ("test", test)):
            if texts:
                data[key] = [s.model_dump(mode="json") for s in _specs(texts)]
        result = run_finetune(FinetuneConfig.model_validate(data), resume=resume, force=force)
    except (ValidationError, DataError, ValueError, FileNotFoundError, ChanceLevelError) as exc:
        fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(
            f"selected {result.best_checkpoint} (epoch {result.best_epoch}): "
            + json.dumps({k: round(v, 4) for k, v in result.val_metrics.items()})
        )
        typer.echo(
            f"export it with: fsfm export --checkpoint {result.best_checkpoint} --name <name> --task {data['task']}"
        )


def _rate(value: float | None, interval: tuple[float, float] | None, count: int | None) -> str:
    low, high = interval or (float("nan"), float("nan"))
    return f"{value:.4f} [{low:.4f}, {high:.4f}] of {count}"


def operating_point_lines(thresholds: Thresholds) -> list[str]:
    """Each calibrated point with its rates, their 95 % intervals and counts; then the unresolvable targets."""
    from training.calibrate import point_name

    lines = [
        f"{p.name:12s} threshold {p.threshold:.4f}  fpr {_rate(p.fpr, p.fpr_interval, p.genuine)}  "
        f"tpr {_rate(p.tpr, p.tpr_interval, p.attacks)}"
        for p in thresholds.operating_points
    ]
    return lines + [
        f"{point_name(u.target_fpr):12s} not resolvable: {u.genuine} genuine faces, {u.needed} needed"
        for u in thresholds.unresolved
    ]


def _summary(report: dict[str, Any]) -> list[str]:
    def pct(value: Any) -> str:
        return "   -  " if value is None else f"{100 * value:6.2f}"

    lines = [f"{'set':32s} {'AUC':>6s} {'EER':>6s} {'vAUC':>6s} {'vEER':>6s} {'HTER':>6s}"]
    for name, entry in report["sets"].items():
        frame, video = entry["frame"], entry.get("video", {})
        lines.append(
            f"{name[:32]:32s} {pct(frame.get('auc'))} {pct(frame.get('eer'))} {pct(video.get('auc'))} "
            f"{pct(video.get('eer'))} {pct(frame.get('hter'))}"
        )
    for name, entry in report["sets"].items():
        for point in entry.get("fpr_points", []):
            target = f"TPR at {100 * point['target_fpr']:g}% FPR"
            if point["resolvable"]:
                low, high = point["tpr_interval"] or (None, None)
                interval = "" if low is None else f" [{100 * low:.2f}, {100 * high:.2f}]"
                lines.append(
                    f"{name[:32]:32s} {target}: {100 * point['tpr']:.2f}{interval} ({point['genuine']} genuine)"
                )
            else:
                why = f"{point['genuine']} genuine faces, {point['needed']} needed"
                lines.append(f"{name[:32]:32s} {target}: not resolvable ({why})")
    return lines


def evaluate(
    test: list[str] = typer.Option(
        ...,
        help="Test set as FORMAT:PATH,KEY=VALUE,... (e.g. celebdf:/data/Celeb-DF-v2); repeat for a cross-dataset run.",
    ),
    model: str = typer.Option(
        ...,
        help="A model package (its folder, or NAME or NAME:VERSION in --models) or a fine-tuned checkpoint "
        "(.pth, ours or official).",
    ),
    output_dir: Path = typer.Option(Path("evaluation"), help="Where report.json and the ROC PNGs go."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    task: Task | None = typer.Option(
        None, help="Task (default: the package's; deepfake for checkpoints without metadata)."
    ),
    threshold: float | None = typer.Option(
        None, min=0.0, max=1.0, help="Attack-score threshold for the error rates (default: the model's)."
    ),
    target_fpr: list[float] = typer.Option([0.01], help="FPRs at which to report the TPR."),
    num_heads: int | None = typer.Option(None, min=1, help="Attention heads of a checkpoint of non-standard size."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0, help="Image-decoding processes."),
    device: str = typer.Option("cpu", help="Device for checkpoints (packages run on ONNX Runtime)."),
    faces_cache: Path | None = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Evaluate a model on one or more test sets: report.json and ROC-curve PNGs.

    Frame- and video-level AUC, EER, AP and accuracy, with HTER, APCER, BPCER, ACER and TPR at the given FPRs.
    """
    from fsfm.assets import cache_dir
    from fsfm.package.repository import PackageError
    from training.evaluate import PackageScorer, evaluate_sets, open_scorer
    from training.finetune_data import DataError, open_source

    try:
        scorer = open_scorer(model, models, task.value if task else "deepfake", num_heads, device)
        chosen_task = task.value if task else scorer.manifest.task if isinstance(scorer, PackageScorer) else "deepfake"
        cache = faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache, input_size=scorer.size) for spec in _specs(test)]
        report = evaluate_sets(scorer, sources, output_dir, chosen_task, threshold, target_fpr, batch_size, workers)
    except (PackageError, DataError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo("\n".join(_summary(report)))
    typer.echo(
        f"threshold {report['threshold']:.4f} ({report['threshold_source']}); report: {output_dir / 'report.json'}"
    )


def export(
    checkpoint: Path = typer.Option(..., exists=True, dir_okay=False, help="Fine-tuned checkpoint (.pth)."),
    name: str = typer.Option(..., help="Model name in the repository."),
    task: Task = typer.Option(..., help="What the model detects."),
    version: int = typer.Option(1, min=1, help="Package version (an integer)."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    mean_std_file: Path | None = typer.Option(
        None, exists=True, help="pretrain_ds_mean_std.txt to normalise with (default: beside the checkpoint)."
    ),
    num_heads: int | None = typer.Option(None, help="Attention heads, when not a standard ViT-S/B/L/H."),
    threshold: float | None = typer.Option(
        None, min=0.0, max=1.0, help="Default attack-score threshold (default: the checkpoint's calibration, else 0.5)."
    ),
    tolerance: float = typer.Option(1e-3, help="Max |torch - ONNX| allowed on the check batches."),
    demo: bool = typer.Option(False, help="Mark the package as a demo model, not fit for decisions."),
    overwrite: bool = typer.Option(False, help="Replace an existing package of the same version."),
    with_torch: bool = typer.Option(False, help="Also write model.pt for the development torch engine."),
    force: bool = typer.Option(False, help="Export even when the checkpoint's validation AUC is near chance."),
    test_transform: TestTransform | None = typer.Option(
        None,
        help="The face crop's test transform: resize (the official paper's test log; the default for official "
        "checkpoints) or center_crop (resize 256 + centre crop 224, the official README's commands). "
        "Default for ours: what their fine-tuning evaluated with.",
    ),
    tensorrt: bool = typer.Option(
        False, help="Also build model.plan with TensorRT (needs TensorRT and an NVIDIA GPU)."
    ),
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
            force=force,
            test_transform=test_transform.value if test_transform else None,
            **overrides,
        )
        if tensorrt:
            from training.tensorrt_build import add_plan_to_package

            low, opt, high = trt_batch
            package = add_plan_to_package(
                package, precision=trt_precision, min_batch=low, opt_batch=opt, max_batch=high
            )
    except (ExportError, ValueError, KeyError, RuntimeError) as exc:  # EngineError is a RuntimeError
        fail(str(exc))
    typer.echo(
        f"exported {package.manifest.ref} to {package.path} "
        f"(max |torch - onnx| = {package.manifest.onnx.max_abs_diff:.2e})"
    )


def calibrate(
    model: str = typer.Option(..., help="Model package: its folder, or NAME or NAME:VERSION in --models."),
    val: list[str] = typer.Option(..., help="Validation set(s) with real and fake (or live and spoof) faces."),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    target_fpr: list[float] = typer.Option(
        [0.01, 0.001], help="False-positive rates to calibrate operating points for."
    ),
    default: DefaultThreshold = typer.Option(
        DefaultThreshold.eer, help="The package's default threshold: the EER point, or 0.5."
    ),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0),
    faces_cache: Path | None = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Choose a package's thresholds on validation data and write them into its manifest.

    The default threshold (the EER point, or 0.5) and operating points at fixed FPRs, with the validation
    metrics.
    """
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
        fail(str(exc))
    typer.echo(f"{manifest.ref}: default threshold {manifest.thresholds.default:.4f}")
    for line in operating_point_lines(manifest.thresholds):
        typer.echo(f"  {line}")


def quantize(
    model: str = typer.Option(..., help="Model package: its folder, or NAME or NAME:VERSION in --models."),
    heldout: list[str] = typer.Option(
        ..., help="Held-out set(s) (as --val of calibrate) on which each variant is judged against fp32."
    ),
    variants: str | None = typer.Option(
        None,
        help=f"Comma-separated variants to add, of {', '.join(QUANTIZE_VARIANTS)} (default: all this host can make).",
    ),
    calibration: list[str] | None = typer.Option(
        None, help="Face set(s) calibrating static int8 (openvino-int8); default: the held-out sets."
    ),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(2, min=0),
    faces_cache: Path | None = typer.Option(None, help="Where faces extracted from benchmark videos are kept."),
) -> None:
    """Add faster variants of a package (int8, bf16), each judged against fp32 on held-out faces.

    The drift of each variant is recorded in the manifest; `fsfm serve` runs a variant automatically
    only where the CPU gains from it and its drift is within the tolerance (docs/engines.md).
    """
    from fsfm.assets import cache_dir
    from fsfm.package.repository import ModelRepository, PackageError, load_package
    from training.finetune_data import DataError, open_source
    from training.quantize import add_variants

    names = [name.strip() for name in variants.split(",") if name.strip()] if variants else None
    try:
        package = load_package(Path(model)) if Path(model).is_dir() else ModelRepository(models).get(model)
        cache = faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache) for spec in _specs(heldout)]
        calibrating = [open_source(spec, cache) for spec in _specs(calibration or [])]
        package, skipped = add_variants(package, sources, names, calibrating, batch_size, workers)
    except (PackageError, DataError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for name, why in skipped.items():
        typer.echo(f"{package.manifest.ref}: {name} not made: {why}", err=True)
    for variant in package.manifest.variants:
        if not variant.heldout or variant.format == "tensorrt-plan":
            continue
        problem = variant.drift_problem()
        verdict = "within tolerance" if problem is None else f"NOT served automatically: {problem}"
        typer.echo(f"{package.manifest.ref}: {variant.precision} {variant.format} ({variant.file}): {verdict}")
        for check in variant.heldout:
            auc = "" if check.auc_fp32 is None else f"AUC fp32 {check.auc_fp32:.4f} variant {check.auc_variant:.4f}, "
            typer.echo(
                f"  {check.set}: {check.faces} faces, {auc}max |score diff| {check.max_abs_score_diff:.4f}, "
                f"mean {check.mean_abs_score_diff:.4f}, labels agree on {check.agreeing_faces} of {check.faces}"
            )


def pull(
    model: list[OfficialModel] | None = typer.Argument(
        None, help="Official models to pull (default: all): the VGGFace2 pretraining checkpoint, the fine-tuned ones."
    ),
    accept_licence: bool = typer.Option(
        False, "--accept-licence", help="Accept the weights' CC BY-NC 4.0 licence (non-commercial use only)."
    ),
    models: Path = typer.Option(Path("models"), envvar="FSFM_MODELS", help="Model repository folder."),
    download_dir: Path | None = typer.Option(
        None, help="Where the checkpoints are kept, in the repository's layout (default: the fsfm cache)."
    ),
    revision: str = typer.Option("main", help="Revision (branch, tag or commit) of the weights' repository."),
    test_transform: TestTransform = typer.Option(
        TestTransform.resize,
        help="The packages' test transform: resize (the paper's numbers) or center_crop (the README's commands).",
    ),
) -> None:
    """Download the official FSFM weights, verify them, and export the fine-tuned ones to model packages.

    From the Hugging Face repository `Wolowolo/fsfm-3c` (`HF_ENDPOINT` to use a mirror). The weights are
    CC BY-NC 4.0, non-commercial use only: nothing is downloaded without `--accept-licence`.
    """
    from fsfm.assets import cache_dir
    from training.export import ExportError
    from training.pull import LICENCE_NOTICE, PullError
    from training.pull import pull as run_pull

    if not accept_licence:
        typer.echo(LICENCE_NOTICE, err=True)
        fail("the licence was not accepted: nothing was downloaded")
    try:
        results = run_pull(
            [m.value for m in model] if model else list(OFFICIAL),
            models,
            download_dir or cache_dir() / "official",
            accept_licence,
            revision,
            test_transform.value,
        )
    except (PullError, ExportError, ValueError, OSError) as exc:
        fail(str(exc))
    for pulled in results:
        if pulled.package is None:
            typer.echo(f"{pulled.model.key}: {pulled.checkpoint} (fine-tune with --pretrained {pulled.checkpoint})")
        else:
            state = "already in the repository" if pulled.skipped else f"exported to {pulled.package.path}"
            typer.echo(f"{pulled.model.key}: {pulled.package.manifest.ref} {state}")


if __name__ == "__main__":  # torchrun --nproc-per-node N -m training.finetune_commands finetune --config run.json
    main = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    for command in (finetune, evaluate, export, calibrate, quantize):
        main.command()(command)
    main()
