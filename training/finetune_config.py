"""The configuration of one fine-tuning run, saved as ``config.json`` beside its checkpoints.

Every field the task's recipe decides (the FSFM paper's fine-tuning settings, arXiv 2412.12032;
docs/finetuning.md) may be left out: it is then filled from
``RECIPES[task]`` (with the self-blended-images adjustments when ``sbi`` is on), so the saved file
always spells out what ran.

* deepfake (DfD): batch 32 per GPU, effective batch 64 (paper: 2 GPUs; gradient accumulation makes it up
  on one, ``training.recipe``), blr 2.5e-4, 10 epochs, 5 warm-up, layer decay 0.65, weight decay 0.05,
  drop path 0.1, mixup 0.8 / cutmix 1.0, label smoothing 0.1, random erasing 0.25, RandomResizedCrop +
  flip + RandAugment, global pool, no class weighting, min-val-loss selection.
* diffusion (DiFF): the same with batch 256 (one GPU), blr 5e-4, 50 epochs, ImageNet mean/std.
* liveness (FAS): Adam lr 1e-4 (constant), weight decay 1e-6, no layer decay, no drop path, no
  mixup; 4,000 iterations = 40 "epochs" of 100 (the official code evaluates every 100 iterations);
  every batch holds the same number of live and spoof faces from every training domain (12 + 12
  per domain with 4 domains and batch 96); HSV-saturation jitter + flip; best-HTER selection.
  The official FAS head (a 512-d bottleneck with a normalised classifier) is not used: liveness
  models use the same global-pool ViT classifier as the other tasks, which is what a model
  package serves.
* ``sbi``: training fakes are self-blended images made on the fly from the real faces of the
  training sets (Shiohara & Yamasaki 2022), as pairs (real, its blend); SBI trains without
  mixup/cutmix, with pair-consistent colour/JPEG/crop augmentation and no class weighting (pairs are
  balanced by construction).

A recipe's warm-up that would not end before a shorter run does is cut to the recipe's share of the run,
with a ``RecipeWarning`` (``training.recipe``); an explicit ``warmup_epochs`` is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fsfm.package.manifest import DEFAULT_CLASSES, ClassSemantics, Task
from training.recipe import accumulation_steps, capped_warmup
from training.schedules import CosineSchedule

DataFormat = Literal["auto", "folder", "csv", "prepared", "ffpp", "celebdf", "dfdc", "dfdcp", "mcio"]
DATA_FORMATS: tuple[str, ...] = ("auto", "folder", "csv", "prepared", "ffpp", "celebdf", "dfdc", "dfdcp", "mcio")
Split = Literal["train", "val", "test"]


class DataSpec(BaseModel):
    """One dataset to read: a layout (``format``), where it is, and layout options.

    On the command line: ``[format:]path[,key=value...]``, e.g. ``ffpp:/data/FF++,split=train``,
    ``celebdf:/data/Celeb-DF-v2``, ``mcio:/data/MCIO,domain=msu,split=test``, ``/data/faces`` (auto:
    a CSV file, an ``fsfm prepare`` output, or a folder of ``<label>/`` sub-folders).
    """

    format: DataFormat = "auto"
    path: Path
    split: Split | None = None
    name: str | None = Field(default=None, description="name in reports (default: derived from format and path)")
    options: dict[str, str] = Field(
        default_factory=dict, description="layout options, e.g. methods, compression, domain, frames"
    )

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        head, *pairs = text.split(",")
        fmt, sep, rest = head.partition(":")
        if sep and fmt in DATA_FORMATS:
            data: dict[str, Any] = {"format": fmt, "path": rest}
        else:
            data = {"path": head}
        options: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise ValueError(f"{text!r}: expected key=value after the path, got {pair!r}")
            options[key.strip()] = value.strip()
        for key in ("split", "name"):
            if key in options:
                data[key] = options.pop(key)
        return cls(**data, options=options)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = self.path.name or str(self.path)
        parts = [base if self.format in ("auto", "folder", "csv", "prepared") else self.format]
        parts += [self.options[k] for k in ("domain", "methods") if k in self.options]
        if self.split:
            parts.append(self.split)
        return "-".join(parts)


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning run needs. ``None`` in a recipe field means "the task's recipe"."""

    task: Task
    pretrained: Path = Field(
        description="pretraining checkpoint (ours or official), or a fine-tuned classifier to continue from"
    )
    output_dir: Path
    train: list[DataSpec] = Field(min_length=1)
    val: list[DataSpec] = Field(default_factory=list, description="validation sets (selection and calibration)")
    test: list[DataSpec] = Field(default_factory=list, description="sets evaluated once training ends (cross-dataset)")
    val_fraction: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of training videos held out when no val set is given"
    )
    sbi: bool = Field(default=False, description="train on self-blended pseudo-fakes of the training sets' real faces")
    classes: ClassSemantics | None = None

    # Model.
    input_size: int = Field(default=224, ge=16)
    num_heads: int | None = Field(
        default=None, description="attention heads, when neither the checkpoint nor a preset tells"
    )
    global_pool: bool = True
    drop_path: float | None = Field(default=None, ge=0.0, lt=1.0)
    normalization: Literal["pretrained", "imagenet", "vggface2"] | None = Field(
        default=None, description="pretrained: the checkpoint's statistics or the pretrain_ds_mean_std.txt beside it"
    )
    crop_scale: float | None = Field(
        default=None,
        gt=0.0,
        description="crop scale the training faces were cut with (default: the prepared data's, else 1.3)",
    )
    crop_box: Literal["ours", "dlib"] = Field(
        default="ours", description="detector whose boxes the training crops used (dlib: FSFM's released face sets)"
    )

    # Optimisation.
    optimizer: Literal["adamw", "adam"] | None = None
    epochs: int | None = Field(default=None, ge=1)
    iters_per_epoch: int | None = Field(default=None, ge=1, description="default: one pass over the training data")
    warmup_epochs: float | None = Field(default=None, ge=0.0)
    schedule: Literal["cosine", "constant"] | None = None
    batch_size: int | None = Field(default=None, ge=2, description="per process; pairs count as two")
    accum_iter: int | None = Field(
        default=None, ge=1, description="gradient accumulation steps; default: those reaching effective_batch"
    )
    effective_batch: int | None = Field(
        default=None, ge=1, description="batch x processes x accumulation of the official run (the recipe's)"
    )
    blr: float | None = Field(default=None, gt=0.0)
    lr: float | None = Field(default=None, gt=0.0, description="absolute peak lr; default blr * effective batch / 256")
    min_lr: float = Field(default=1e-6, ge=0.0)
    layer_decay: float | None = Field(default=None, gt=0.0, le=1.0)
    weight_decay: float | None = Field(default=None, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(default=None, gt=0.0, description="the paper used none")

    # Regularisation and data.
    mixup: float | None = Field(default=None, ge=0.0)
    cutmix: float | None = Field(default=None, ge=0.0)
    mixup_prob: float = Field(default=1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    smoothing: float | None = Field(default=None, ge=0.0, lt=1.0)
    augment: Literal["simple", "sbi", "fas", "none"] | None = None
    reprob: float | None = Field(default=None, ge=0.0, le=1.0)
    eval_resize: Literal["resize", "center_crop"] = Field(
        default="resize",
        description="resize: plain resize (the paper's DfD test run); center_crop: resize 256/224 then centre crop",
    )
    balance: Literal["none", "loss", "sampler", "domain"] | None = Field(
        default=None,
        description="none: as the official DfD/DiFF runs; loss: inverse-frequency class weights; "
        "sampler: class-balanced sampling; domain: equal live/spoof per domain per batch",
    )
    real_frames: int | None = Field(
        default=None,
        ge=1,
        description="frames per real video when faces are extracted (FF++ protocol: 4x the fakes' 32)",
    )

    # Selection and calibration.
    selection: Literal["loss", "auc", "hter"] | None = None
    target_fprs: list[float] = Field(default_factory=lambda: [0.01, 0.001])
    default_threshold: Literal["eer", "fixed"] = Field(
        default="eer", description="the package's default threshold: the val EER point, or 0.5"
    )

    # Runtime.
    seed: int = 0
    num_workers: int = Field(default=4, ge=0)
    device: str = Field(default="auto", description="auto (CUDA when present), cpu or cuda")
    amp: bool = Field(
        default=True, description="mixed precision on CUDA (bf16 when supported, else fp16); CPUs run fp32"
    )
    faces_cache: Path | None = Field(
        default=None, description="where faces extracted from videos are kept (default: the fsfm cache)"
    )
    demo: bool = Field(default=False, description="mark the model as a demo, not fit for decisions")
    description: str = ""
    licence: str | None = Field(default=None, description="default: the pretrained checkpoint's")

    @field_validator("target_fprs")
    @classmethod
    def _fprs_in_range(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < f < 1.0 for f in value):
            raise ValueError("target FPRs must be in (0, 1)")
        return sorted(set(value), reverse=True)

    @model_validator(mode="before")
    @classmethod
    def _fill_recipe(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("task") not in RECIPES:
            return data
        recipe = dict(RECIPES[data["task"]])
        if data.get("sbi"):
            recipe |= SBI_OVERRIDES
        filled = dict(data)
        for key, value in recipe.items():
            if filled.get(key) is None:
                filled[key] = value
        if data.get("warmup_epochs") is None and recipe["warmup_epochs"] > 0:
            share = recipe["warmup_epochs"] / recipe["epochs"]
            filled["warmup_epochs"] = capped_warmup(recipe["warmup_epochs"], float(filled["epochs"]), share, True)
        if filled.get("classes") is None:
            filled["classes"] = DEFAULT_CLASSES[data["task"]]
        return filled

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.lr is None and self.blr is None:
            raise ValueError("give blr or lr")
        if self.balance == "domain" and self.iters_per_epoch is None:
            raise ValueError("balance='domain' samples with replacement: set iters_per_epoch")
        if self.sbi and self.task != "deepfake":
            raise ValueError("self-blended images are deepfake training data")
        if self.sbi and self.balance in ("sampler", "domain"):
            raise ValueError("self-blended pairs are balanced already: use balance 'none' or 'loss'")
        assert self.epochs is not None and self.warmup_epochs is not None  # filled by the recipe
        capped_warmup(self.warmup_epochs, self.epochs, 1.0, from_recipe=False)  # warns when it is too long
        return self

    def accumulation(self, world_size: int) -> int:
        """Accumulation steps of a run on ``world_size`` processes: ``accum_iter``, else those that reach
        ``effective_batch``."""
        assert self.batch_size is not None  # filled by the recipe
        return accumulation_steps(self.accum_iter, self.effective_batch, self.batch_size, world_size)

    def peak_lr(self, world_size: int) -> float:
        """lr = blr * effective batch / 256 (the MAE/FSFM rule) unless an absolute lr is given."""
        if self.lr is not None:
            return self.lr
        assert self.blr is not None and self.batch_size is not None
        accum = self.accum_iter or self.accumulation(world_size)
        return self.blr * self.batch_size * accum * world_size / 256

    def lr_schedule(self, peak_lr: float) -> CosineSchedule:
        """Warm-up over ``warmup_epochs``, then half-cosine to ``min_lr`` at ``epochs``, or ``peak_lr`` held
        (``schedule='constant'``)."""
        assert self.epochs is not None  # filled by the recipe
        return CosineSchedule(peak_lr, self.epochs, self.warmup_epochs or 0.0, self.min_lr, self.schedule == "constant")

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> FinetuneConfig:
        return cls.model_validate_json(Path(path).read_text())


_DFD: dict[str, Any] = {
    "optimizer": "adamw",
    "epochs": 10,
    "warmup_epochs": 5,
    "schedule": "cosine",
    "batch_size": 32,
    "effective_batch": 64,
    "blr": 2.5e-4,
    "layer_decay": 0.65,
    "weight_decay": 0.05,
    "drop_path": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "augment": "simple",
    "reprob": 0.25,
    "balance": "none",
    "normalization": "pretrained",
    "selection": "loss",
    "real_frames": 128,
}

RECIPES: dict[str, dict[str, Any]] = {
    "deepfake": _DFD,
    "diffusion": _DFD
    | {
        "batch_size": 256,
        "effective_batch": 256,
        "blr": 5e-4,
        "epochs": 50,
        "normalization": "imagenet",
        "real_frames": 32,
    },
    "liveness": {
        "optimizer": "adam",
        "epochs": 40,
        "iters_per_epoch": 100,
        "warmup_epochs": 0,
        "schedule": "constant",
        "batch_size": 96,
        "effective_batch": 96,
        "lr": 1e-4,
        "layer_decay": 1.0,
        "weight_decay": 1e-6,
        "drop_path": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "smoothing": 0.0,
        "augment": "fas",
        "reprob": 0.0,
        "balance": "domain",
        "normalization": "pretrained",
        "selection": "hter",
    },
}

SBI_OVERRIDES: dict[str, Any] = {"mixup": 0.0, "cutmix": 0.0, "augment": "sbi", "reprob": 0.0, "balance": "none"}
