"""Reading prepared face datasets for pretraining: normalised crops, their region maps, and the
masks of the chosen strategy computed on the CPU in the collate function, as upstream
``fsfm-3c/util/datasets.py`` ``collate_fn_crfrp`` (github.com/wolo-wolo/FSFM-CVPR25;
docs/pretraining.md).

No augmentation (the official pipeline has none, and crops/flips would move the faces off their region
maps).

Masks must be reproducible for an exact ``--resume``: the batch sampler hands every sample of a
batch the same mask seed, derived from (seed, epoch, rank, batch number), so a batch's masks do not
depend on which loader worker builds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fsfm.face.crop import Normalization
from training.masking import mask_batch
from training.prepare import normalization_from_sums, open_shard, read_manifest


class SampleKey(NamedTuple):
    """What the batch sampler yields per sample: the dataset index and its batch's mask seed."""

    index: int
    mask_seed: int


class FaceSample(NamedTuple):
    image: np.ndarray  # (S, S, 3) uint8 RGB
    regions: np.ndarray  # (S, S) uint8 LaPa labels
    mask_seed: int


class PreparedFaces(Dataset[FaceSample]):
    """One or more ``fsfm prepare`` outputs, concatenated. ``normalization`` holds their joint
    statistics, combined from the pixel sums stored at prepare time (nothing is recomputed)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r) for r in roots]
        manifests = [read_manifest(r) for r in self.roots]
        sizes = {m["image_size"] for m in manifests}
        if len(sizes) != 1:
            raise ValueError(f"datasets have different crop sizes {sorted(sizes)}; prepare them at one size")
        self.image_size = sizes.pop()
        self.shards = [(root, s["name"]) for root, m in zip(self.roots, manifests, strict=False) for s in m["shards"]]
        counts = [s["faces"] for m in manifests for s in m["shards"]]
        self.offsets = np.cumsum([0] + counts)
        if not len(self):
            raise ValueError(f"no faces in {', '.join(map(str, self.roots))}")
        stats = [m["pixel_stats"] for m in manifests]
        self.normalization = normalization_from_sums(
            sum(s["pixels"] for s in stats),
            np.sum([s["sum"] for s in stats], axis=0).tolist(),
            np.sum([s["sum_sq"] for s in stats], axis=0).tolist(),
        )
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each loader worker instead of being pickled as arrays.
        return {**self.__dict__, "_open": {}}

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 crop (S, S, 3) and region map (S, S) of face ``index``."""
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if shard not in self._open:
            self._open[shard] = open_shard(*self.shards[shard])
        images, regions = self._open[shard]
        local = index - int(self.offsets[shard])
        return np.array(images[local]), np.array(regions[local])  # copies: writable, detached from the map

    def __getitem__(self, key: SampleKey | int) -> FaceSample:
        index, seed = (key.index, key.mask_seed) if isinstance(key, SampleKey) else (int(key), 0)
        return FaceSample(*self.arrays(index), seed)


class PretrainBatchSampler(Sampler[list[SampleKey]]):
    """Per-process batches of a per-epoch permutation, as DistributedSampler + drop_last: the
    permutation depends on (seed, epoch); rank r takes every world-th index; incomplete batches are
    dropped. Each batch carries its own mask seed."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(f"{num_samples} faces are too few for batches of {batch_size} on {world_size} process(es)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def __iter__(self) -> Iterator[list[SampleKey]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        mine = order[: (self.num_samples // self.world_size) * self.world_size][self.rank :: self.world_size].tolist()
        for b in range(len(self)):
            seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank, b]).generate_state(1)[0])
            yield [SampleKey(i, seed) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]


class MaskingCollate:
    """Stacks, normalises and masks a batch: -> {"images": (B, 3, S, S) float32 standardised with
    ``normalization``, "mask", "fr_mask": (B, L) bool drawn by ``strategy`` from the batch's seed}."""

    def __init__(self, normalization: Normalization, strategy: str, patch_size: int, mask_ratio: float) -> None:
        self.strategy, self.patch_size, self.mask_ratio = strategy, patch_size, mask_ratio
        std = torch.tensor(normalization.std)
        self.scale, self.shift = 1.0 / (255.0 * std), -torch.tensor(normalization.mean) / std  # x*scale+shift

    def __call__(self, batch: list[FaceSample]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(batch[0].mask_seed)
        mask, fr = mask_batch(
            np.stack([s.regions for s in batch]), self.strategy, self.patch_size, self.mask_ratio, rng
        )
        pixels = torch.from_numpy(np.stack([s.image for s in batch])).float()  # (B, S, S, 3), 0..255
        images = pixels.mul_(self.scale).add_(self.shift).permute(0, 3, 1, 2).contiguous()  # (B, 3, S, S)
        return {"images": images, "mask": torch.from_numpy(mask), "fr_mask": torch.from_numpy(fr)}
