"""An FSFM pretraining run, as mae's ``main_pretrain.py``: configuration -> data, networks, optimiser ->
epoch loop (``training.pretrain_engine``) -> checkpoints and log. The recipe (docs/pretraining.md; FSFM
paper, arXiv 2412.12032): AdamW (0.9, 0.95) with weight decay 0.05 except on 1-D parameters and biases;
lr = blr * effective batch / 256 with a per-iteration linear warm-up and a half-cosine to ``min_lr``;
EMA target update every iteration with momentum 0.996 -> 1 on a cosine; AMP on CUDA (bf16, or fp16 with a
GradScaler), fp32 on CPU; gradient accumulation with DDP's ``no_sync``.

One process per GPU under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU); the same
command runs as a single plain process. Unlike the official loop, the EMA works without a DDP
wrapper too.

Outputs in ``output_dir``: ``config.json``, ``pretrain_ds_mean_std.txt``, ``log.csv`` (every
iteration: lr, momentum and every loss term), ``checkpoint-<epoch>.pth`` (``{'model', 'optimizer',
'epoch', 'scaler', 'args'}`` as the official files, plus ``config`` and ``rng`` for an exact resume) and
``checkpoint-te-<epoch>.pth`` (the target network's ``model``).

Run: ``fsfm pretrain --config run.json`` or
``torchrun --nproc-per-node N -m training.commands pretrain --config run.json``.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fsfm.models.checkpoints import load_checkpoint
from training.datasets import MaskingCollate, PreparedFaces, PretrainBatchSampler
from training.distributed import amp_dtype, setup_device
from training.param_groups import weight_decay_groups
from training.prepare import MEAN_STD_FILE, write_mean_std
from training.pretrain_config import PretrainConfig
from training.pretrain_engine import LOSS_TERMS, PretrainEngine
from training.pretrain_model import FSFMPretrainModel, parameter_counts
from training.saving import OPTIMIZER_NAMES, group_names, load_optimizer_by_name, official_group_names, save_atomic

LOG_FIELDS = ("epoch", "iteration", "lr", "momentum", *LOSS_TERMS)
LOG_FILE = "log.csv"
CONFIG_FILE = "config.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pth")


def latest_checkpoint(folder: Path) -> Path:
    """The online checkpoint with the highest epoch in ``folder``."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*.pth") if (m := _CHECKPOINT.fullmatch(p.name))]
    if not found:
        raise FileNotFoundError(f"no checkpoint-<epoch>.pth in {folder}")
    return max(found)[1]


def target_checkpoint_path(online: Path) -> Path:
    """``checkpoint-<N>.pth`` -> ``checkpoint-te-<N>.pth`` beside it."""
    return online.with_name(online.name.replace("checkpoint-", "checkpoint-te-", 1))


class Pretrainer:
    """One pretraining run: data, online and target networks, optimiser, schedules, checkpoints, log."""

    def __init__(self, config: PretrainConfig, resume: Path | None = None, progress: bool = True) -> None:
        device, self.dist = setup_device(config.device)
        # config.json then says what ran: the accumulation this many processes need
        config = config.model_copy(update={"accum_iter": config.accumulation(self.dist.world_size)})
        self.config = config
        self.device, self.progress = device, progress
        self.amp = amp_dtype(config.amp, device)
        torch.manual_seed(config.seed)
        arch = config.arch

        self.dataset = PreparedFaces(config.data)
        if self.dataset.image_size != arch.encoder.img_size:
            raise ValueError(
                f"the data holds {self.dataset.image_size} px crops but the model takes {arch.encoder.img_size} px"
            )
        self.sampler = PretrainBatchSampler(
            len(self.dataset), config.batch_size, config.seed, self.dist.rank, self.dist.world_size
        )
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=MaskingCollate(
                self.dataset.normalization, config.masking, arch.encoder.patch_size, config.mask_ratio
            ),
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=config.num_workers > 0,
        )
        self.iters_per_epoch = len(self.sampler)

        self.model = FSFMPretrainModel(
            arch, config.norm_pix_loss, config.weight_fr, config.weight_cl, config.cl_loss
        ).to(device)
        self.target = self.model.target_network().to(device)
        ddp = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.dist.world_size > 1
            else None
        )
        assert config.accum_iter is not None
        self.effective_batch = config.batch_size * config.accum_iter * self.dist.world_size
        self.peak_lr = config.lr if config.lr is not None else config.blr * self.effective_batch / 256
        self.optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, config.weight_decay), lr=self.peak_lr, betas=config.betas
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.engine = PretrainEngine(
            config,
            self.model,
            self.target,
            self.optimizer,
            self.scaler,
            config.lr_schedule(self.peak_lr),
            device,
            self.amp,
            self.iters_per_epoch,
            self.dist.world_size,
            ddp,
        )
        self.start_epoch = 0
        self.output = config.output_dir
        if resume is not None:
            self.resume(resume)
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            config.save(self.output / CONFIG_FILE)
            write_mean_std(self.output / MEAN_STD_FILE, self.dataset.normalization)

    @property
    def total_iters(self) -> int:
        return self.engine.total_iters

    def _print(self, message: str) -> None:
        if self.dist.is_main and self.progress:
            from tqdm import tqdm

            tqdm.write(message)

    def run(self) -> None:
        from tqdm import tqdm

        config = self.config
        counts = parameter_counts(self.model)
        self._print(
            f"FSFM pretraining: {len(self.dataset)} faces, {self.iters_per_epoch} iterations/epoch on "
            f"{self.dist.world_size} process(es), effective batch {self.effective_batch}, peak lr {self.peak_lr:.3g}; "
            f"parameters: encoder {counts['encoder']:,}, pixel decoder {counts['pixel_decoder']:,}, "
            f"ID network {counts['id_network']:,}, total {counts['total']:,}"
        )
        log_file = self._open_log() if self.dist.is_main else None
        bar = tqdm(
            total=self.total_iters,
            initial=self.start_epoch * self.iters_per_epoch,
            desc="pretrain",
            unit="it",
            disable=not (self.dist.is_main and self.progress),
            dynamic_ncols=True,
        )
        try:
            log = csv.DictWriter(log_file, LOG_FIELDS) if log_file is not None else None
            for epoch in range(self.start_epoch, config.epochs):
                self.sampler.set_epoch(epoch)
                means = self.engine.train_one_epoch(self.loader, epoch, log, bar)
                if log_file is not None:
                    log_file.flush()
                self._print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
                if (epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs:
                    self.save(epoch)
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            self.dist.close()

    def _open_log(self) -> Any:
        """``log.csv`` for appending; on resume, rows past the resumed epoch (from the interrupted
        run) are dropped first, so the log reads as one uninterrupted run."""
        path = self.output / LOG_FILE
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [row for row in csv.DictReader(fh) if int(row["epoch"]) < self.start_epoch]
        fh = open(path, "w", newline="")
        writer = csv.DictWriter(fh, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        return fh

    def save(self, epoch: int) -> Path:
        """``checkpoint-<epoch>.pth`` (online) and ``checkpoint-te-<epoch>.pth`` (target), rank 0 only."""
        path = self.output / f"checkpoint-{epoch}.pth"
        if not self.dist.is_main:
            return path
        config_json = self.config.model_dump(mode="json")
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        online = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            OPTIMIZER_NAMES: group_names(self.optimizer, self.model),
            "epoch": epoch,
            "scaler": self.scaler.state_dict(),
            "args": argparse.Namespace(**config_json),
            "config": config_json,
            "rng": rng,
        }
        save_atomic(online, path)
        target = {"model": self.target.state_dict(), "epoch": epoch, "args": online["args"]}
        save_atomic(target, target_checkpoint_path(path))
        return path

    def resume(self, path: Path) -> None:
        """Continues from ``checkpoint-<N>.pth`` (or the latest one in a folder; ours or the official code's)
        and its target file: weights, optimiser (matched by parameter name, ``training.saving``), GradScaler
        and RNG state; training restarts at epoch N + 1."""
        path = latest_checkpoint(path) if path.is_dir() else path
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.target.load_state_dict(load_checkpoint(target_checkpoint_path(path))["model"])
        names = checkpoint.get(OPTIMIZER_NAMES) or official_group_names(checkpoint["model"], self.model)
        load_optimizer_by_name(self.optimizer, self.model, checkpoint["optimizer"], names)
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self._print(f"resumed from {path} (epoch {checkpoint['epoch']})")
