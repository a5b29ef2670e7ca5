"""A fine-tuning run, as mae's ``main_finetune.py`` (docs/finetuning.md; FSFM paper, arXiv 2412.12032): a
pretrained FSFM encoder (ours or the official weights) -> the global-pool ViT classifier the service serves.
This module builds the model, data, optimiser and schedule, and runs the epochs, validation, calibration and
checkpoints; the step, epoch and prediction live in ``training.finetune_engine``.

* Model: encoder weights from the checkpoint, position embedding resized to the input size, new
  ``fc_norm`` + ``head`` (or a fine-tuned classifier loaded whole, to continue training), drop path.
* Optimiser: AdamW (or Adam for liveness) with BEiT layer-wise lr decay: patch embedding, cls token
  and position embedding are layer 0, block i is layer i + 1, ``fc_norm``/``head`` layer depth + 1;
  a layer's lr is scaled by decay^(depth + 1 - layer); no weight decay on 1-D parameters, the cls
  token and the position embedding. Per-iteration linear warm-up, then half-cosine to ``min_lr`` (or
  constant), set on the first micro-step of each accumulation window; lr = blr * effective batch / 256.
* Loss: mixup/cutmix (timm's batch mode) with label-smoothed soft targets and soft-target cross-entropy,
  unweighted as the official runs, or weighted per class (``balance='loss'``); class-balanced or
  domain-balanced sampling on request (``training.finetune_data.TrainBatchSampler``).
* Accumulation: as given, else what reaches the recipe's effective batch on this many processes
  (``training.recipe``).
* AMP on CUDA only (bf16 when supported, else fp16 with a GradScaler); CPUs run fp32.
* DDP under ``torchrun`` (NCCL on GPUs, gloo on CPU); validation is sharded across ranks and gathered.
* Every epoch: validation loss and metrics, thresholds calibrated on the validation scores, and
  ``checkpoint-last.pth``; the best epoch by the selection metric (min val loss by default, as the
  paper) is also ``checkpoint-min_val_loss.pth`` (``-max_val_auc``, ``-min_val_hter``).
* At the end: a selected model whose validation AUC is near chance (``training.calibrate.chance_verdict``)
  fails the run with ``ChanceLevelError`` (the checkpoints stay), unless ``force``.

Checkpoints use the official layout ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` plus an
``fsfm`` dict (architecture, normalisation, crop, classes, calibrated thresholds, validation metrics,
data, licence) that ``fsfm export`` turns into a model package's manifest. ``config.json`` and
``log.jsonl`` (one line per epoch) sit beside them, with ``pretrain_ds_mean_std.txt``.

Shared with pretraining: ``training.distributed`` (process group, device, AMP dtype), ``training.schedules``
(the lr schedule), ``training.param_groups`` (layer-wise lr decay) and ``training.saving`` (atomic saves).

Run: ``fsfm finetune ...`` or ``torchrun --nproc-per-node N -m training.finetune_commands finetune --config run.json``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fsfm.face.crop import (
    DLIB_BOX_TRANSFORM,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BoxTransform,
    CropSpec,
    Normalization,
    center_crop_side,
)
from fsfm.models.checkpoints import (
    classifier_from_pretrained,
    infer_vit_config,
    is_classifier_state,
    load_checkpoint,
    model_state,
    resize_pos_embed,
)
from fsfm.models.config import ViTConfig
from fsfm.models.vit import ViTClassifier
from training.augment import EvalTransform, TrainTransform
from training.calibrate import calibrated_thresholds, calibration_metrics, chance_verdict
from training.distributed import amp_dtype, setup_device
from training.evaluate import ScoredSet, TorchScorer, evaluate_sets, set_report
from training.export import MEAN_STD_FILE
from training.finetune_config import FinetuneConfig
from training.finetune_data import (
    AugmentedFaces,
    ConcatSource,
    DataError,
    EvalFaces,
    FaceSource,
    SelfBlendedPairs,
    SelfBlendedSource,
    TrainBatchSampler,
    class_weights,
    collate_faces,
    open_source,
    split_by_video,
)
from training.finetune_engine import FinetuneEngine, Mixup
from training.param_groups import layer_decay_groups
from training.prepare import write_mean_std
from training.pretrain_config import preset_name
from training.recipe import RecipeWarning
from training.saving import OPTIMIZER_NAMES, group_names, load_optimizer_by_name, save_atomic

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
LAST_CHECKPOINT = "checkpoint-last.pth"
BEST_CHECKPOINT = {
    "loss": "checkpoint-min_val_loss.pth",
    "auc": "checkpoint-max_val_auc.pth",
    "hter": "checkpoint-min_val_hter.pth",
}
OFFICIAL_LICENCE = (
    "CC-BY-NC-4.0 (inherited: fine-tuned from a checkpoint without fsfm metadata, such as the official FSFM weights)"
)


class ChanceLevelError(RuntimeError):
    """The fine-tuned model's validation AUC is near chance: it learned nothing worth exporting."""


# ------------------------------------------------------------------------------------------ model
def _metadata(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint["fsfm"] if isinstance(checkpoint.get("fsfm"), dict) else {}


def checkpoint_vit_config(
    checkpoint: dict[str, Any], state: dict[str, torch.Tensor], num_heads: int | None
) -> ViTConfig:
    """The encoder architecture: our fine-tuning metadata, our pretraining config, else the shapes
    (heads from a preset of the same width and depth, or ``num_heads``)."""
    meta = _metadata(checkpoint)
    pretrain = checkpoint.get("config")
    if "vit" in meta:
        config = ViTConfig.model_validate(meta["vit"])
    elif isinstance(pretrain, dict) and isinstance(pretrain.get("architecture"), dict):
        config = ViTConfig.model_validate(pretrain["architecture"]["encoder"])
    else:
        config = infer_vit_config(state, num_heads)
    return config.model_copy(update={"num_heads": num_heads}) if num_heads else config


def initial_model(config: FinetuneConfig) -> tuple[ViTClassifier, dict[str, Any]]:
    """The classifier to fine-tune, and the checkpoint it came from (for its metadata)."""
    checkpoint = load_checkpoint(config.pretrained)
    state = model_state(checkpoint)
    vit = checkpoint_vit_config(checkpoint, state, config.num_heads).model_copy(update={"img_size": config.input_size})
    assert config.classes is not None and config.drop_path is not None  # filled by the recipe
    num_classes = len(config.classes.names)
    if not is_classifier_state(state):
        model = classifier_from_pretrained(state, vit, num_classes, config.global_pool, config.drop_path)
        return model, checkpoint
    if state["head.weight"].shape[0] != num_classes:
        raise ValueError(
            f"{config.pretrained} is a {state['head.weight'].shape[0]}-class classifier; "
            f"this task has {num_classes} classes"
        )
    model = ViTClassifier(vit, num_classes, global_pool="fc_norm.weight" in state, drop_path_rate=config.drop_path)
    model.load_state_dict({**state, "pos_embed": resize_pos_embed(state["pos_embed"], vit.grid_size)}, strict=True)
    return model, checkpoint


def resolve_normalization(config: FinetuneConfig, meta: dict[str, Any]) -> tuple[Normalization, str]:
    """The model's input statistics and where they came from (docs/finetuning.md): the pretraining
    statistics (checkpoint metadata, else ``pretrain_ds_mean_std.txt`` beside it, else FSFM's fallback:
    VGGFace2 for DfD/DiFF, ImageNet for FAS), or ImageNet / VGGFace2 when asked for."""
    imagenet = Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if config.normalization == "imagenet":
        return imagenet, "ImageNet"
    if config.normalization == "vggface2":
        return Normalization(), "VGGFace2"
    if "normalization" in meta:
        return Normalization.model_validate(meta["normalization"]), f"{config.pretrained.name} metadata"
    beside = config.pretrained.parent / MEAN_STD_FILE
    if beside.is_file():
        return Normalization.from_mean_std_file(beside), str(beside)
    if config.task == "liveness":
        return imagenet, f"ImageNet (no {MEAN_STD_FILE} beside the checkpoint)"
    return Normalization(), f"VGGFace2 (no {MEAN_STD_FILE} beside the checkpoint)"


# ------------------------------------------------------------------------------------------- run
@dataclass
class FinetuneResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    val_metrics: dict[str, float]
    test_report: dict[str, Any] | None


class Finetuner:
    """One fine-tuning run: model, data, optimiser, schedule, validation, calibration, checkpoints."""

    def __init__(
        self, config: FinetuneConfig, resume: bool = False, progress: bool = True, force: bool = False
    ) -> None:
        device, self.dist = setup_device(config.device)
        # config.json then says what ran: the accumulation this many processes need
        config = config.model_copy(update={"accum_iter": config.accumulation(self.dist.world_size)})
        self.config, self.progress, self.force = config, progress, force
        self.device = device
        torch.manual_seed(config.seed + self.dist.rank)
        self.output = Path(config.output_dir)
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)

        self.model, pretrained = initial_model(config)
        self.model.to(device)
        self.pretrained_meta = _metadata(pretrained)
        self.pretrained_is_ours = bool(self.pretrained_meta) or isinstance(pretrained.get("config"), dict)
        self.normalization, self.norm_source = resolve_normalization(config, self.pretrained_meta)
        assert config.classes is not None
        self.classes = config.classes
        self.label_to_class = torch.tensor(
            [self.classes.names.index(self.classes.genuine_label), self.classes.attack_index], device=device
        )

        self._build_data()
        assert config.weight_decay is not None and config.layer_decay is not None
        groups = layer_decay_groups(self.model, config.weight_decay, config.layer_decay)
        optimizer_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.peak_lr = config.peak_lr(self.dist.world_size)
        self.optimizer = optimizer_cls(groups, lr=self.peak_lr, betas=config.betas)
        self.amp_dtype = amp_dtype("auto" if config.amp else "off", device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        assert config.mixup is not None and config.cutmix is not None and config.smoothing is not None
        self.mixup = Mixup(
            config.mixup,
            config.cutmix,
            config.mixup_prob,
            config.mixup_switch_prob,
            config.smoothing,
            len(self.classes.names),
        )
        train_model: torch.nn.Module = self.model
        if self.dist.world_size > 1:
            train_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.engine = FinetuneEngine(
            self.model,
            train_model,
            self.optimizer,
            self.scaler,
            config.lr_schedule(self.peak_lr),
            self.mixup,
            self.label_to_class,
            self.classes.attack_index,
            device,
            self.amp_dtype,
            config.accum_iter,
            config.clip_grad,
            self.class_weight,
            self.dist.rank,
            self.dist.world_size,
        )

        self.start_epoch = 0
        self.best: dict[str, Any] | None = None
        if resume:
            self._resume()

    # ------------------------------------------------------------------------------------ data
    def _build_data(self) -> None:
        config = self.config
        from fsfm.assets import cache_dir

        cache = config.faces_cache or cache_dir() / "faces"
        if not self.dist.is_main:  # rank 0 extracts faces first (video layouts); the others then read them
            dist.barrier()
        size = config.input_size
        opened = [open_source(spec, cache, config.real_frames, input_size=size) for spec in config.train]
        val = [open_source(spec, cache, config.real_frames, input_size=size) for spec in config.val]
        if self.dist.is_main and self.dist.world_size > 1:
            dist.barrier()
        train: FaceSource = ConcatSource(opened) if len(opened) > 1 else opened[0]
        if not val and config.val_fraction > 0:
            train, held_out = split_by_video(train, config.val_fraction, config.seed)
            val = [held_out] if len(held_out) else []
        if config.sbi:
            val = [v if any(i.label for i in v.items) else SelfBlendedSource(v, config.seed) for v in val]
        self.train_source = train
        self.val_source: FaceSource | None = (ConcatSource(val) if len(val) > 1 else val[0]) if val else None
        if self.val_source is not None and len({item.label for item in self.val_source.items}) < 2:
            raise DataError(
                f"the validation set {self.val_source.name} needs both genuine and attack faces "
                "to select and calibrate with"
            )

        assert config.augment is not None and config.reprob is not None and config.batch_size is not None
        transform = TrainTransform(config.augment, config.input_size, self.normalization, config.reprob)
        self.eval_transform = EvalTransform(config.input_size, self.normalization, config.eval_resize)
        if config.sbi:  # samples are the real faces; each gives a (real, self-blend) pair
            self.train_set: AugmentedFaces | SelfBlendedPairs = SelfBlendedPairs(train, transform)
            items = [train.items[i] for i in self.train_set.reals]
            per_batch = config.batch_size // 2
        else:
            self.train_set = AugmentedFaces(train, transform)
            items = train.items
            per_batch = config.batch_size
        labels = [item.label for item in items]
        assert config.balance is not None
        self.sampler = TrainBatchSampler(
            labels,
            [item.domain for item in items],
            per_batch,
            config.balance,
            config.seed,
            self.dist.rank,
            self.dist.world_size,
            config.iters_per_epoch,
        )
        self.train_loader = DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=collate_faces,
            pin_memory=self.device.type == "cuda",
        )
        self.class_weight = None
        if config.balance == "loss" and not config.sbi:
            genuine, attack = class_weights(labels)
            weight = torch.zeros(len(self.classes.names), device=self.device)
            weight[self.label_to_class] = torch.tensor([genuine, attack], dtype=torch.float32, device=self.device)
            self.class_weight = weight

    # -------------------------------------------------------------------------------- metadata
    def crop_spec(self) -> CropSpec:
        """The crop the training faces were cut with, and the evaluation transform, which the service must
        reproduce."""
        scale = self.config.crop_scale or self.train_source.crop_scale or 1.3
        box = DLIB_BOX_TRANSFORM if self.config.crop_box == "dlib" else BoxTransform()
        size = self.config.input_size
        side = center_crop_side(size) if self.config.eval_resize == "center_crop" else None
        return CropSpec(size=size, scale=scale, box_transform=box, center_crop_from=side)

    def metadata(self) -> dict[str, Any]:
        """What ``fsfm export`` needs beyond the weights (thresholds and metrics are added per epoch)."""
        config = self.config
        data = "; ".join(
            [f"train: {', '.join(s.label for s in config.train)}" + (" (self-blended fakes)" if config.sbi else "")]
            + ([f"val: {', '.join(s.label for s in config.val)}"] if config.val else [])
        )
        licence = (
            config.licence
            or self.pretrained_meta.get("licence")
            or (None if self.pretrained_is_ours else OFFICIAL_LICENCE)
        )
        description = config.description or f"FSFM ViT fine-tuned for {config.task} detection ({data})"
        return {
            "task": config.task,
            "vit": self.model.config.model_dump(),
            "preset": preset_name(self.model.config),
            "global_pool": self.model.global_pool,
            "normalization": self.normalization.model_dump(mode="json"),
            "normalization_source": self.norm_source,
            "crop": self.crop_spec().model_dump(mode="json"),
            "classes": self.classes.model_dump(mode="json"),
            "eval_resize": config.eval_resize,
            "demo": config.demo,
            "description": description,
            "licence": licence,
            "data": data,
            "pretrained": str(config.pretrained),
        }

    def save(self, path: Path, epoch: int, extra: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        save_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                OPTIMIZER_NAMES: group_names(self.optimizer, self.model),
                "epoch": epoch,
                "scaler": self.scaler.state_dict(),
                "args": argparse.Namespace(**self.config.model_dump(mode="json")),
                "fsfm": self.metadata() | extra,
                "best": self.best,
            },
            path,
        )

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.output / LAST_CHECKPOINT)
        self.model.load_state_dict(checkpoint["model"])
        load_optimizer_by_name(self.optimizer, self.model, checkpoint["optimizer"], checkpoint[OPTIMIZER_NAMES])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self.best = checkpoint.get("best")

    # ---------------------------------------------------------------------------------- epochs
    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        self.sampler.set_epoch(epoch)
        rng = np.random.default_rng([self.config.seed, epoch, self.dist.rank, 1])
        show = self.progress and self.dist.is_main
        with tqdm(total=len(self.sampler), desc=f"epoch {epoch}", disable=not show, leave=False) as bar:
            return self.engine.train_one_epoch(self.train_loader, epoch, rng, bar)

    def predict(self, source: FaceSource) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, attack scores, mean cross-entropy) over ``source``, sharded across ranks."""
        faces = EvalFaces(source, self.eval_transform)
        scores, loss = self.engine.predict(faces, 2 * (self.config.batch_size or 32), self.config.num_workers)
        return np.array([item.label for item in source.items]), scores, loss

    def validate(self) -> dict[str, Any]:
        """Validation loss, metrics, the selection value, and thresholds calibrated on the scores."""
        assert self.val_source is not None
        labels, scores, loss = self.predict(self.val_source)
        videos = [item.video for item in self.val_source.items]
        report = set_report(ScoredSet("val", labels, scores, videos), self.config.task, 0.5)
        metrics = {"val_loss": loss} | calibration_metrics(labels, scores, videos)
        hter = report.get("fas_protocol", {}).get("hter_at_test_eer_threshold", report["frame"]["eer"])
        selection = {"loss": loss, "auc": -report["frame"]["auc"], "hter": hter}[self.config.selection or "loss"]
        thresholds = calibrated_thresholds(labels, scores, self.config.target_fprs, self.config.default_threshold)
        return {"metrics": metrics, "selection": selection, "thresholds": thresholds.model_dump(mode="json")}

    def run(self) -> FinetuneResult:
        config = self.config
        assert config.epochs is not None
        if self.dist.is_main:
            config.save(self.output / CONFIG_FILE)
            write_mean_std(self.output / MEAN_STD_FILE, self.normalization)
        best_name = BEST_CHECKPOINT[config.selection or "loss"]
        last_metrics: dict[str, float] = {}
        try:
            for epoch in range(self.start_epoch, config.epochs):
                stats = self.train_epoch(epoch)
                extra: dict[str, Any] = {"metrics": {}}
                if self.val_source is not None:
                    val = self.validate()
                    extra = {"metrics": val["metrics"], "thresholds": val["thresholds"]}
                    if self.best is None or val["selection"] < self.best["value"]:
                        self.best = {"epoch": epoch, "value": val["selection"], "metric": config.selection}
                        self.save(self.output / best_name, epoch, extra)
                last_metrics = extra["metrics"]
                self.save(self.output / LAST_CHECKPOINT, epoch, extra)
                self._log({"epoch": epoch, **stats, **last_metrics})
            best_path = self.output / best_name
            if self.val_source is None:  # nothing to select with: the last epoch is the result
                self.best = {"epoch": config.epochs - 1, "value": None, "metric": None}
                best_path = self.output / LAST_CHECKPOINT
            test_report = self._test(best_path) if config.test else None
        finally:
            self.dist.close()
        assert self.best is not None
        best_meta = load_checkpoint(best_path).get("fsfm", {}) if self.dist.is_main else {}
        result = FinetuneResult(
            best_path,
            self.output / LAST_CHECKPOINT,
            int(self.best["epoch"]),
            best_meta.get("metrics", last_metrics),
            test_report,
        )
        verdict = chance_verdict(result.val_metrics)
        if verdict is not None and self.dist.is_main:
            if not self.force:
                raise ChanceLevelError(f"{verdict}; {best_path} is kept, --force accepts it")
            warnings.warn(f"{verdict}; accepted (--force)", RecipeWarning, stacklevel=2)
        return result

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.output / LOG_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def _test(self, best_path: Path) -> dict[str, Any] | None:
        """Cross-dataset evaluation of the selected checkpoint on the test sets (rank 0)."""
        if not self.dist.is_main:
            return None
        from fsfm.assets import cache_dir

        checkpoint = load_checkpoint(best_path)
        self.model.load_state_dict(checkpoint["model"])
        thresholds = checkpoint["fsfm"].get("thresholds", {})
        scorer = TorchScorer(
            self.model,
            self.normalization,
            self.classes,
            best_path.name,
            self.config.eval_resize,
            float(thresholds.get("default", 0.5)),
            "default",
            self.device,
        )
        cache = self.config.faces_cache or cache_dir() / "faces"
        sources = [open_source(spec, cache, input_size=self.config.input_size) for spec in self.config.test]
        return evaluate_sets(
            scorer,
            sources,
            self.output / "eval",
            self.config.task,
            None,
            self.config.target_fprs,
            batch_size=2 * (self.config.batch_size or 32),
            workers=self.config.num_workers,
            progress=self.progress,
        )


def finetune(
    config: FinetuneConfig, resume: bool = False, progress: bool = True, force: bool = False
) -> FinetuneResult:
    return Finetuner(config, resume=resume, progress=progress, force=force).run()
