"""Checkpoint writing and optimiser state shared by every training run.

Contracts:

* ``save_atomic`` writes to a hidden temporary file beside the target and renames it into place, so a reader
  (or a resume after a crash) sees either the previous file or the complete new one, never a partial write.
* Optimiser state is restored by parameter *name*, not position (``load_optimizer_by_name``). torch keys an
  optimiser's state by each parameter's position in its groups, and two models with the same parameters may
  register them in different orders (ours and the official pretraining model do: restoring by position puts
  a 4096-wide projector moment on a 768-wide weight). Our checkpoints store the names of each group
  (``optimizer_names``, ``group_names``); an official checkpoint's are rebuilt from its ``model`` keys, whose
  order is the official model's registration order, grouped as timm's ``add_weight_decay`` groups them
  (``official_group_names``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

OPTIMIZER_NAMES = "optimizer_names"  # checkpoint key: the parameter names of each optimiser group


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through ``.<name>.tmp`` and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def group_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    """The names (in ``model``) of each optimiser group's parameters, in group order."""
    name_of = {id(param): name for name, param in model.named_parameters()}
    return [[name_of[id(param)] for param in group["params"]] for group in optimizer.param_groups]


def official_group_names(state_keys: Iterable[str], model: nn.Module) -> list[list[str]]:
    """The groups of the official pretraining optimiser (timm ``add_weight_decay``: trainable parameters in
    registration order, [no decay: 1-D and biases, decay: the rest]), from an official ``model`` dict's keys
    (registration order) and which of them ``model`` trains."""
    params = dict(model.named_parameters())
    trainable = [key for key in state_keys if key in params and params[key].requires_grad]
    no_decay = [k for k in trainable if params[k].ndim <= 1 or k.endswith(".bias")]
    return [no_decay, [k for k in trainable if k not in set(no_decay)]]


def load_optimizer_by_name(
    optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any], saved_names: list[list[str]]
) -> None:
    """Load ``saved`` (an optimiser ``state_dict`` whose groups hold the parameters named ``saved_names``)
    into ``optimizer`` over ``model``, matching parameters by name. Each of our groups takes the
    hyper-parameters of the saved group its parameters came from; a parameter missing from the checkpoint,
    groups that do not correspond, or a moment of another shape than its parameter raise ``ValueError``."""
    saved_groups = saved["param_groups"]
    if [len(g["params"]) for g in saved_groups] != [len(n) for n in saved_names]:
        raise ValueError("the checkpoint's optimiser groups do not match its parameter names")
    where = {
        name: (g, index)
        for g, names in enumerate(saved_names)
        for name, index in zip(names, saved_groups[g]["params"], strict=True)
    }
    params = dict(model.named_parameters())
    state: dict[int, Any] = {}
    groups: list[dict[str, Any]] = []
    position = 0
    for names in group_names(optimizer, model):
        missing = [n for n in names if n not in where]
        if missing:
            raise ValueError(f"the checkpoint's optimiser has no state for {missing[:3]}")
        sources = {where[n][0] for n in names}
        if len(sources) > 1:
            raise ValueError(f"parameters {names[:3]}... come from different optimiser groups in the checkpoint")
        source = saved_groups[sources.pop()] if names else {}
        ids = list(range(position, position + len(names)))
        for name, new_index in zip(names, ids, strict=True):
            entry = saved["state"].get(where[name][1])
            if entry is None:
                continue
            for key, value in entry.items():
                if torch.is_tensor(value) and value.ndim > 0 and value.shape != params[name].shape:
                    raise ValueError(
                        f"optimiser {key} of {name} is {tuple(value.shape)}, the parameter {tuple(params[name].shape)}"
                    )
            state[new_index] = entry
        groups.append({k: v for k, v in source.items() if k != "params"} | {"params": ids})
        position += len(names)
    ours = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": [ours[i] | g for i, g in enumerate(groups)]})
