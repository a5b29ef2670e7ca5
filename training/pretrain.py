"""The FSFM pretraining loop (method spec §3.4): AdamW (0.9, 0.95) with weight decay 0.05 except on
1-D parameters and biases; lr = blr * effective batch / 256 with a per-iteration linear warm-up and a
half-cosine to ``min_lr``, set on the first micro-step of each accumulation window; EMA target
update every iteration (micro-steps included) with momentum 0.996 -> 1 on a cosine; AMP on CUDA
(bf16, or fp16 with a GradScaler), fp32 on CPU; gradient accumulation with DDP's ``no_sync``.

One process per GPU under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU); the same
command runs as a single plain process. Unlike the official loop, the EMA works without a DDP
wrapper too (spec pitfall 4).

Outputs in ``output_dir``: ``config.json``, ``pretrain_ds_mean_std.txt``, ``log.csv`` (every
iteration: lr, momentum and every loss term), ``checkpoint-<epoch>.pth`` (``{'model', 'optimizer',
'epoch', 'scaler', 'args'}`` as the official files, plus ``config`` and ``rng`` for an exact resume) and
``checkpoint-te-<epoch>.pth`` (the target network's ``model``).

Run: ``fsfm pretrain --config run.json`` or ``torchrun --nproc_per_node=N -m training.pretrain --config run.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fsfm.models.checkpoints import load_checkpoint
from training.datasets import MaskingCollate, PreparedFaces, PretrainBatchSampler
from training.prepare import MEAN_STD_FILE, write_mean_std
from training.pretrain_config import PretrainConfig
from training.pretrain_model import FSFMPretrainModel, parameter_counts

LOSS_TERMS = ("loss", "rec_m", "rec_fr", "cl")
LOG_FIELDS = ("epoch", "iteration", "lr", "momentum", *LOSS_TERMS)
LOG_FILE = "log.csv"
CONFIG_FILE = "config.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pth")


def lr_at(epoch: float, config: PretrainConfig, peak_lr: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up from 0, then half-cosine to min_lr."""
    if epoch < config.warmup_epochs:
        return peak_lr * epoch / config.warmup_epochs
    progress = (epoch - config.warmup_epochs) / max(config.epochs - config.warmup_epochs, 1e-12)
    return config.min_lr + (peak_lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def momentum_at(iteration: int, total: int, base: float) -> float:
    """EMA momentum: cosine from ``base`` at iteration 0 to 1 at ``total``, no warm-up."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * iteration / total)) / 2.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's ``add_weight_decay``: no decay on 1-D parameters and biases; frozen ones left out
    (so cls and mask tokens are decayed, fixed position embeddings are not optimised at all)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_o for every parameter the target shares with the online
    network, fixed position embeddings included."""
    online_params = dict(online.named_parameters())
    names = [name for name, _ in target.named_parameters()]
    target_params = [param for _, param in target.named_parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, [online_params[n].detach() for n in names], alpha=1.0 - momentum)


def latest_checkpoint(folder: Path) -> Path:
    """The online checkpoint with the highest epoch in ``folder``."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*.pth") if (m := _CHECKPOINT.fullmatch(p.name))]
    if not found:
        raise FileNotFoundError(f"no checkpoint-<epoch>.pth in {folder}")
    return max(found)[1]


def target_checkpoint_path(online: Path) -> Path:
    """``checkpoint-<N>.pth`` -> ``checkpoint-te-<N>.pth`` beside it."""
    return online.with_name(online.name.replace("checkpoint-", "checkpoint-te-", 1))


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> Distributed:
    """Joins the process group when launched by ``torchrun`` (WORLD_SIZE > 1, env:// rendezvous)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), ours)


def _device(config: PretrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def amp_dtype(config: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. CPU always runs fp32 (bf16 autocast is slower than fp32
    on CPUs without AMX)."""
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "bf16" or (config.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class Pretrainer:
    """One pretraining run: data, online and target networks, optimiser, schedules, checkpoints, log."""

    def __init__(self, config: PretrainConfig, resume: Path | None = None, progress: bool = True) -> None:
        self.config = config
        device = _device(config)
        self.dist = init_distributed(device.type == "cuda")
        if device.type == "cuda" and self.dist.world_size > 1:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device, self.progress = device, progress
        self.amp = amp_dtype(config, device)
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
        self.total_iters = config.epochs * self.iters_per_epoch

        self.model = FSFMPretrainModel(arch, config.norm_pix_loss, config.weight_fr, config.weight_cl, config.cl_loss).to(device)
        self.target = self.model.target_network().to(device)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if self.dist.world_size > 1
            else None
        )
        self.effective_batch = config.batch_size * config.accum_iter * self.dist.world_size
        self.peak_lr = config.lr if config.lr is not None else config.blr * self.effective_batch / 256
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config.weight_decay), lr=self.peak_lr, betas=config.betas
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.start_epoch = 0
        self.output = config.output_dir
        if resume is not None:
            self.resume(resume)
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            config.save(self.output / CONFIG_FILE)
            write_mean_std(self.output / MEAN_STD_FILE, self.dataset.normalization)

    def _print(self, message: str) -> None:
        if self.dist.is_main and self.progress:
            from tqdm import tqdm

            tqdm.write(message)

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
        """One iteration (a micro-step when accumulating): returns lr, momentum and the loss terms
        (averaged over processes)."""
        config = self.config
        if step % config.accum_iter == 0:
            lr = lr_at(epoch + step / self.iters_per_epoch, config, self.peak_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        images = batch["images"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        fr_mask = batch["fr_mask"].to(self.device, non_blocking=True)
        update = (step + 1) % config.accum_iter == 0
        autocast = torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not update else contextlib.nullcontext()
        with no_sync:
            with autocast:
                with torch.no_grad():
                    target = self.target(images)  # (B, E): the full view
                losses = (self.ddp or self.model)(images, mask, fr_mask, target)
            if not math.isfinite(losses["loss"].item()):
                raise FloatingPointError(f"loss is {losses['loss'].item()} at epoch {epoch} step {step}; stopping")
            self.scaler.scale(losses["loss"] / config.accum_iter).backward()
        if update:
            if config.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        momentum = momentum_at(epoch * self.iters_per_epoch + step, self.total_iters, config.ema_momentum)
        ema_update(self.target, self.model, momentum)

        values = torch.stack([losses[k].detach().float() for k in LOSS_TERMS])
        if self.dist.world_size > 1:
            dist.all_reduce(values)
            values /= self.dist.world_size
        return {"lr": self.optimizer.param_groups[0]["lr"], "momentum": momentum, **dict(zip(LOSS_TERMS, values.tolist()))}

    def train_epoch(self, epoch: int, log: csv.DictWriter | None, bar: Any) -> dict[str, float]:
        self.model.train()
        self.sampler.set_epoch(epoch)
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        for step, batch in enumerate(self.loader):
            record = self.train_step(batch, epoch, step)
            for key in LOSS_TERMS:
                sums[key] += record[key]
            if log is not None:
                log.writerow({"epoch": epoch, "iteration": epoch * self.iters_per_epoch + step, **record})
            bar.set_postfix({k: f"{record[k]:.4f}" for k in LOSS_TERMS}, refresh=False)
            bar.update()
        return {k: v / self.iters_per_epoch for k, v in sums.items()}

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
                means = self.train_epoch(epoch, log, bar)
                if log_file is not None:
                    log_file.flush()
                self._print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
                if (epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs:
                    self.save(epoch)
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            if self.dist.initialised_here:
                dist.destroy_process_group()

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
            "epoch": epoch,
            "scaler": self.scaler.state_dict(),
            "args": argparse.Namespace(**config_json),
            "config": config_json,
            "rng": rng,
        }
        _save_atomic(online, path)
        _save_atomic({"model": self.target.state_dict(), "epoch": epoch, "args": online["args"]}, target_checkpoint_path(path))
        return path

    def resume(self, path: Path) -> None:
        """Continues from ``checkpoint-<N>.pth`` (or the latest one in a folder) and its target file:
        weights, optimiser, GradScaler and RNG state; training restarts at epoch N + 1."""
        path = latest_checkpoint(path) if path.is_dir() else path
        checkpoint = load_checkpoint(path)
        self.model.load_state_dict(checkpoint["model"])
        self.target.load_state_dict(load_checkpoint(target_checkpoint_path(path))["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.start_epoch = int(checkpoint["epoch"]) + 1
        self._print(f"resumed from {path} (epoch {checkpoint['epoch']})")


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":  # torchrun -m training.pretrain --config run.json
    import typer

    from training.commands import pretrain

    typer.run(pretrain)
