"""Reading FSFM checkpoints: the official formats (the released weights, docs/finetuning.md) and ours, which share them.

Official pretraining / fine-tuning files are ``{'model': state_dict, 'optimizer', 'epoch', 'scaler',
'args': argparse.Namespace}``; ``args`` may hold ``pathlib`` paths. torch>=2.6 loads with
``weights_only=True`` by default, which refuses those classes, so they are allow-listed here rather
than falling back to full unpickling. The official face anti-spoofing files (``.pth.tar``) also hold numpy
scalars (their validation metrics), allow-listed too, under numpy 1's module name and numpy 2's.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsfm.models.config import VIT_PRESETS, ViTConfig
from fsfm.models.vit import ViTClassifier

_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
    np.dtype,
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    *(type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)),
]

# Keys of the pretrained online network that the encoder keeps.
_ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` restricted to tensors, containers and the allow-listed argparse/pathlib types."""
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside any supported checkpoint layout (``model``, ``state_dict`` or bare)."""
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            state = checkpoint[key]
            break
    else:
        state = checkpoint
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError("checkpoint holds no tensors")
    return state


def infer_vit_config(state: dict[str, torch.Tensor], num_heads: int | None = None) -> ViTConfig:
    """Read the architecture off the tensor shapes. Head count is not in the shapes: it defaults to the
    preset with the same width and depth (ViT-S/B/L/H), else 64-wide heads."""
    try:
        proj = state["patch_embed.proj.weight"]  # (D, C, p, p)
        pos = state["pos_embed"]  # (1, 1 + L, D)
    except KeyError as exc:
        raise ValueError(f"not a ViT state dict: missing {exc.args[0]}") from exc
    embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    if num_heads is None:
        same = [c for c in VIT_PRESETS.values() if (c.embed_dim, c.depth, c.patch_size) == (embed_dim, depth, patch)]
        num_heads = same[0].num_heads if same else max(1, embed_dim // 64)
    return ViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=hidden / embed_dim,
    )


def encoder_state(state: dict[str, torch.Tensor], keep_norm: bool = False) -> dict[str, torch.Tensor]:
    """The encoder part of a pretraining state dict: cls/pos/patch_embed/blocks, plus the
    final ``norm`` for cls-token classifiers. Drops mask token, decoders, projector, predictor."""
    prefixes = _ENCODER_PREFIXES + (("norm.",) if keep_norm else ())
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def is_classifier_state(state: dict[str, torch.Tensor]) -> bool:
    return "head.weight" in state


def classifier_from_state(
    state: dict[str, torch.Tensor], config: ViTConfig | None = None, num_heads: int | None = None
) -> ViTClassifier:
    """A fine-tuned classifier state dict (official DfD/DiFF layout or ours) -> loaded ``ViTClassifier``."""
    if not is_classifier_state(state):
        raise ValueError(
            "not a fine-tuned classifier: no head.weight (a pretraining checkpoint needs fine-tuning first)"
        )
    config = config or infer_vit_config(state, num_heads)
    global_pool = "fc_norm.weight" in state
    model = ViTClassifier(config, num_classes=state["head.weight"].shape[0], global_pool=global_pool)
    model.load_state_dict(state, strict=True)
    return model.eval()


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + g*g, D) -> (1, 1 + grid*grid, D): bicubic over the patch grid, cls row kept (DeiT)."""
    old = int(round((pos_embed.shape[1] - 1) ** 0.5))
    if old == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    d = patches.shape[-1]
    patches = patches.reshape(1, old, old, d).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)


def classifier_from_pretrained(
    state: dict[str, torch.Tensor],
    config: ViTConfig | None = None,
    num_classes: int = 2,
    global_pool: bool = True,
    drop_path_rate: float = 0.0,
) -> ViTClassifier:
    """A pretraining state dict (official online ``checkpoint-N.pth`` or ours) -> a classifier ready
    to fine-tune: encoder weights loaded, position embedding resized to ``config``'s grid if needed,
    ``fc_norm``/``head`` (or ``norm``/``head``) freshly initialised (as mae ``main_finetune.py``)."""
    config = config or infer_vit_config(state)
    encoder = encoder_state(state, keep_norm=not global_pool)
    encoder["pos_embed"] = resize_pos_embed(encoder["pos_embed"], config.grid_size)
    model = ViTClassifier(config, num_classes=num_classes, global_pool=global_pool, drop_path_rate=drop_path_rate)
    result = model.load_state_dict(encoder, strict=False)
    expected_missing = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if global_pool else set())
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise ValueError(
            "pretrained weights do not fit the encoder: "
            f"missing {sorted(set(result.missing_keys) - expected_missing)}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model
