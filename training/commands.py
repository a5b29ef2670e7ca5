"""``fsfm prepare`` and ``fsfm pretrain`` as plain Typer-annotated functions, which ``fsfm_cli`` registers
with ``app.command()(prepare)``. Heavy imports (torch, the detector) happen inside the bodies.

Their flags map onto ``PrepareConfig`` and ``PretrainConfig`` fields (``fsfm.flags``): unset flags leave
the ``--config`` file's values or the configuration's defaults.

Entry point for several processes (DDP): ``torchrun --nproc-per-node N -m training.commands pretrain
--config run.json`` (the same options as ``fsfm pretrain``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from fsfm.console import fail
from fsfm.flags import choices, config_option, literal_choices
from training.masking import MASKING_STRATEGIES
from training.prepare import PrepareConfig
from training.pretrain_config import PretrainConfig

Detector = literal_choices("Detector", PrepareConfig, "detector")
RegionMaps = literal_choices("RegionMaps", PrepareConfig, "region_maps")
Masking = choices("Masking", MASKING_STRATEGIES)
ContrastiveLoss = literal_choices("ContrastiveLoss", PretrainConfig, "cl_loss")
Amp = literal_choices("Amp", PretrainConfig, "amp")


def _prepare_flag(field: str, help: str, *param_decls: str, **kwargs: Any) -> Any:
    return config_option(PrepareConfig, field, help, *param_decls, **kwargs)


def prepare(
    source: Path = typer.Argument(
        ...,
        exists=True,
        file_okay=False,
        help="Folder of face images and/or videos (searched recursively), or an official-layout folder with "
        "images/ and parsing_maps/.",
    ),
    output: Path = typer.Argument(..., help="Dataset folder to create, or to resume filling."),
    size: int | None = _prepare_flag("size", "Crop side in pixels (the model's input size).", min=16),
    scale: float | None = _prepare_flag("scale", "Crop side / longer side of the face box."),
    frames: int | None = _prepare_flag("frames", "Frames per video, evenly spaced.", min=1),
    frame_stride: int | None = _prepare_flag(
        "frame_stride", "Take every n-th frame instead of --frames (1: all frames).", min=1
    ),
    max_faces: int | None = _prepare_flag(
        "max_faces", "Faces kept per image or frame, highest detection score first.", min=1
    ),
    min_face_size: int | None = _prepare_flag("min_face_size", "Smallest face side searched for, in pixels.", min=8),
    score_threshold: float | None = _prepare_flag("score_threshold", "Detection score a face needs.", min=0.0, max=1.0),
    detector: Detector | None = _prepare_flag("detector", "Face detector."),
    detector_weights: Path | None = _prepare_flag("detector_weights", "Detector ONNX weights (folder for MTCNN)."),
    detect_max_side: int | None = _prepare_flag(
        "detect_max_side", "Longest side of the copy faces are detected on (fsfm serve's FSFM_DETECT_MAX_SIDE).", min=32
    ),
    region_maps: RegionMaps | None = _prepare_flag(
        "region_maps",
        "Facial-region maps for CRFR-P: drawn from the detector's landmarks, or read from --parsing-dir "
        "(a face parser's LaPa maps, one FACE-NAME.npy per face).",
    ),
    parsing_dir: Path | None = _prepare_flag(
        "parsing_dir", "Folder of precomputed parsing maps.", exists=True, file_okay=False
    ),
    workers: int | None = typer.Option(None, min=1, help="Worker processes (default: one per CPU core)."),
    shard_size: int | None = _prepare_flag("shard_size", "Faces per storage shard.", min=1),
) -> None:
    """Turn face images and videos into a pretraining or fine-tuning dataset.

    Writes detected, cropped faces and a facial-region map per face, in memory-mappable shards, with a
    manifest. Rerun the same command to resume an interrupted run; unreadable files are skipped and listed.
    """
    given = {k: v for k, v in locals().items() if k not in ("source", "output", "workers") and v is not None}
    from training.prepare import PrepareError, prepare_dataset, summary

    try:
        config = PrepareConfig(**{k: v.value if isinstance(v, Enum) else v for k, v in given.items()})
        manifest = prepare_dataset(source, output, config, workers=workers)
    except (PrepareError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for line in summary(manifest):
        typer.echo(line)
    typer.echo(f"dataset: {output}")


def _flag(field: str, help: str, *param_decls: str, **kwargs: Any) -> Any:
    return config_option(PretrainConfig, field, help, *param_decls, **kwargs)


_NOT_FIELDS = ("config", "resume")  # every other parameter of ``pretrain`` is a PretrainConfig field


def pretrain(
    config: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Run configuration (JSON, the fields of config.json); options below override it.",
    ),
    data: list[Path] | None = _flag("data", "Prepared dataset folder (repeat to concatenate)."),
    output_dir: Path | None = _flag("output_dir", "Where checkpoints, config.json and log.csv go."),
    model: str | None = _flag("model", "Encoder preset (replaces the config's architecture)."),
    epochs: int | None = _flag("epochs", "Epochs."),
    warmup_epochs: float | None = _flag("warmup_epochs", "Warm-up epochs."),
    batch_size: int | None = _flag("batch_size", "Batch per process/GPU."),
    accum_iter: int | None = _flag(
        "accum_iter", "Gradient accumulation steps (default: those reaching --effective-batch).", min=1
    ),
    effective_batch: int | None = _flag(
        "effective_batch", "Batch x GPUs x accumulation to reach (the official run's).", min=1
    ),
    blr: float | None = _flag("blr", "Base lr; lr = blr x effective batch / 256."),
    lr: float | None = _flag("lr", "Absolute peak lr (overrides --blr)."),
    min_lr: float | None = _flag("min_lr", "Final lr of the cosine."),
    weight_decay: float | None = _flag("weight_decay", "AdamW weight decay."),
    masking: Masking | None = _flag("masking", "Masking strategy."),
    mask_ratio: float | None = _flag("mask_ratio", "Masked fraction of patches."),
    weight_fr: float | None = _flag("weight_fr", "Weight of the facial-region reconstruction loss."),
    weight_cl: float | None = _flag("weight_cl", "Weight of the online/target similarity loss."),
    cl_loss: ContrastiveLoss | None = _flag("cl_loss", "Form of the similarity loss."),
    norm_pix_loss: bool | None = _flag(
        "norm_pix_loss", "Per-patch normalised pixel targets.", "--norm-pix-loss/--no-norm-pix-loss"
    ),
    ema_momentum: float | None = _flag("ema_momentum", "Initial EMA momentum of the target."),
    clip_grad: float | None = _flag("clip_grad", "Clip the global gradient norm (0: off).", min=0.0),
    seed: int | None = _flag("seed", "Random seed."),
    num_workers: int | None = _flag("num_workers", "Data-loader processes per GPU."),
    amp: Amp | None = _flag("amp", "Mixed precision on CUDA (auto: bf16 if supported, else fp16)."),
    device: str | None = _flag("device", "auto, cpu or cuda."),
    save_every: int | None = _flag("save_every", "Epochs between checkpoints."),
    resume: Path | None = typer.Option(
        None, exists=True, help="Continue from a checkpoint-N.pth, or the latest one in a folder."
    ),
) -> None:
    """Pretrain an FSFM encoder, self-supervised, on prepared face datasets.

    Masked image modelling with CRFR-P masking plus instance discrimination against an EMA target
    (arXiv 2412.12032). Run on many GPUs or nodes with `torchrun --nproc-per-node N -m training.commands
    pretrain` and the same options.
    """
    given = {name: value for name, value in locals().items() if name not in _NOT_FIELDS and value not in (None, [])}
    from training.prepare import PrepareError
    from training.pretrain import Pretrainer

    fields: dict[str, Any] = json.loads(config.read_text()) if config else {}
    if model is not None:
        fields.pop("architecture", None)
    fields.update({k: v.value if isinstance(v, Enum) else v for k, v in given.items()})
    try:  # configuration and data problems: one line, no traceback
        trainer = Pretrainer(PretrainConfig.model_validate(fields), resume=resume)
    except (PrepareError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    trainer.run()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m training.commands pretrain --config run.json
    main = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    for command in (prepare, pretrain):
        main.command()(command)
    main()
