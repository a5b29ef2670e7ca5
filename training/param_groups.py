"""Optimiser parameter groups shared by the training runs.

* ``weight_decay_groups``: timm's ``add_weight_decay`` (pretraining): no decay on 1-D parameters and
  biases; frozen parameters are left out.
* ``layer_decay_groups``: BEiT / mae ``util/lr_decay.py`` ``param_groups_lrd`` (fine-tuning): each group
  carries ``lr_scale`` = decay^(depth + 1 - layer), which the loop multiplies into the scheduled lr.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fsfm.models.vit import ViTClassifier


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """``[no-decay group, decay group]``: no decay on 1-D parameters and biases; frozen ones left out (so
    cls and mask tokens are decayed, fixed position embeddings are not optimised at all)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def layer_id(name: str, num_layers: int) -> int:
    """A ViT parameter's layer: patch embedding, cls token and position embedding are 0, block i is i + 1,
    everything after the blocks (``fc_norm``, ``head``) is ``num_layers``."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_decay_groups(model: ViTClassifier, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with ``lr_scale`` = decay^(depth + 1 - layer) and weight decay except on 1-D
    parameters, ``cls_token`` and ``pos_embed``, ordered by (layer, weight decay)."""
    num_layers = model.config.depth + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in ("cls_token", "pos_embed")
        layer = layer_id(name, num_layers)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers - layer),
                "layer": layer,
            },
        )
        group["params"].append(param)
    return sorted(groups.values(), key=lambda g: (g["layer"], g["weight_decay"]))
