"""The training side's command-line commands, as plain Typer-annotated functions: ``fsfm`` registers
them with ``app.command()(prepare)``; ``python -m training.pretrain`` runs ``pretrain`` on its own
(for ``torchrun``). Heavy imports (torch, the detector) happen inside the bodies."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer


class Detector(str, Enum):
    mtcnn = "mtcnn"
    retinaface = "retinaface"


class RegionMaps(str, Enum):
    landmarks = "landmarks"
    parsing = "parsing"


class Masking(str, Enum):
    crfr_p = "crfr_p"
    crfr_r = "crfr_r"
    frp = "frp"
    random = "random"


class ContrastiveLoss(str, Enum):
    simsiam = "simsiam"
    byol = "byol"
    infonce = "infonce"


class Amp(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    off = "off"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def prepare(
    source: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of face images and/or videos (searched recursively), or an official-layout folder with images/ and parsing_maps/."),
    output: Path = typer.Argument(..., help="Dataset folder to create, or to resume filling."),
    size: int = typer.Option(224, min=16, help="Crop side in pixels (the model's input size)."),
    scale: float = typer.Option(1.3, help="Crop side / longer side of the face box (FSFM: 1.3)."),
    frames: int = typer.Option(128, min=1, help="Frames per video, evenly spaced."),
    frame_stride: Optional[int] = typer.Option(None, min=1, help="Take every n-th frame instead of --frames (1: all frames)."),
    max_faces: int = typer.Option(1, min=1, help="Faces kept per image or frame, highest detection score first."),
    min_face_size: int = typer.Option(40, min=8, help="Smallest face side searched for, in pixels."),
    score_threshold: float = typer.Option(0.9, min=0.0, max=1.0, help="Detection score a face needs."),
    detector: Detector = typer.Option(Detector.mtcnn, help="Face detector."),
    detector_weights: Optional[Path] = typer.Option(None, help="Detector ONNX weights (folder for MTCNN)."),
    region_maps: RegionMaps = typer.Option(
        RegionMaps.landmarks,
        help="Facial-region maps for CRFR-P: drawn from the detector's landmarks, or read from --parsing-dir (a face parser's LaPa maps, <face name>.npy).",
    ),
    parsing_dir: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="Folder of precomputed parsing maps."),
    workers: Optional[int] = typer.Option(None, min=1, help="Worker processes (default: one per CPU core)."),
    shard_size: int = typer.Option(1024, min=1, help="Faces per storage shard."),
) -> None:
    """Turn face images and videos into a pretraining/fine-tuning dataset: detected, cropped faces and a
    facial-region map per face, in memory-mappable shards, with a manifest. Rerun the same command to
    resume an interrupted run; unreadable files are skipped and listed."""
    from training.prepare import PrepareConfig, PrepareError, prepare_dataset, summary

    try:
        config = PrepareConfig(
            size=size, scale=scale, frames=frames, frame_stride=frame_stride, max_faces=max_faces,
            min_face_size=min_face_size, score_threshold=score_threshold, detector=detector.value,
            detector_weights=detector_weights, region_maps=region_maps.value, parsing_dir=parsing_dir,
            shard_size=shard_size,
        )
        manifest = prepare_dataset(source, output, config, workers=workers)
    except (PrepareError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for line in summary(manifest):
        typer.echo(line)
    typer.echo(f"dataset: {output}")


def pretrain(
    config: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Run configuration (JSON, the fields of config.json); options below override it."),
    data: Optional[list[Path]] = typer.Option(None, help="Prepared dataset folder (repeat to concatenate)."),
    output_dir: Optional[Path] = typer.Option(None, help="Where checkpoints, config.json and log.csv go."),
    model: Optional[str] = typer.Option(None, help="Encoder preset, e.g. fsfm_vit_base_patch16 (replaces the config's architecture)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 400)."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Warm-up epochs (default 40)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch per process/GPU (default 256)."),
    accum_iter: Optional[int] = typer.Option(None, help="Gradient accumulation steps (default 1)."),
    blr: Optional[float] = typer.Option(None, help="Base lr; lr = blr x effective batch / 256 (default 1.5e-4)."),
    lr: Optional[float] = typer.Option(None, help="Absolute peak lr (overrides --blr)."),
    min_lr: Optional[float] = typer.Option(None, help="Final lr of the cosine (default 0)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 0.05)."),
    masking: Optional[Masking] = typer.Option(None, help="Masking strategy (default crfr_p)."),
    mask_ratio: Optional[float] = typer.Option(None, help="Masked fraction of patches (default 0.75)."),
    weight_fr: Optional[float] = typer.Option(None, help="Weight of the facial-region reconstruction loss (default 0.007)."),
    weight_cl: Optional[float] = typer.Option(None, help="Weight of the online/target similarity loss (default 0.1)."),
    cl_loss: Optional[ContrastiveLoss] = typer.Option(None, help="Form of the similarity loss (default simsiam)."),
    norm_pix_loss: Optional[bool] = typer.Option(None, "--norm-pix-loss/--no-norm-pix-loss", help="Per-patch normalised pixel targets (default on)."),
    ema_momentum: Optional[float] = typer.Option(None, help="Initial EMA momentum of the target (default 0.996)."),
    clip_grad: Optional[float] = typer.Option(None, help="Clip the global gradient norm (default: no clipping, as the paper)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    num_workers: Optional[int] = typer.Option(None, help="Data-loader processes per GPU (default 8)."),
    amp: Optional[Amp] = typer.Option(None, help="Mixed precision on CUDA (default auto: bf16 if supported, else fp16)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (default auto)."),
    save_every: Optional[int] = typer.Option(None, help="Epochs between checkpoints (default 20)."),
    resume: Optional[Path] = typer.Option(None, exists=True, help="Continue from checkpoint-<N>.pth, or the latest one in a folder."),
) -> None:
    """FSFM self-supervised pretraining (MIM with CRFR-P masking + ID with an EMA target). Run on many
    GPUs or nodes with ``torchrun --nproc_per_node=N -m training.pretrain`` and the same options."""
    from training.prepare import PrepareError
    from training.pretrain import Pretrainer
    from training.pretrain_config import PretrainConfig

    fields: dict[str, Any] = json.loads(config.read_text()) if config else {}
    given = {
        "data": data or None, "output_dir": output_dir, "model": model, "epochs": epochs,
        "warmup_epochs": warmup_epochs, "batch_size": batch_size, "accum_iter": accum_iter, "blr": blr, "lr": lr,
        "min_lr": min_lr, "weight_decay": weight_decay, "masking": masking.value if masking else None,
        "mask_ratio": mask_ratio, "weight_fr": weight_fr, "weight_cl": weight_cl,
        "cl_loss": cl_loss.value if cl_loss else None, "norm_pix_loss": norm_pix_loss, "ema_momentum": ema_momentum,
        "clip_grad": clip_grad, "seed": seed, "num_workers": num_workers, "amp": amp.value if amp else None,
        "device": device, "save_every": save_every,
    }
    if model is not None:
        fields.pop("architecture", None)
    fields.update({k: v for k, v in given.items() if v is not None})
    try:  # configuration and data problems: one line, no traceback
        trainer = Pretrainer(PretrainConfig.model_validate(fields), resume=resume)
    except (PrepareError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    trainer.run()
