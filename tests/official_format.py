"""Writers of checkpoint files in the official FSFM layouts (the released weights, docs/finetuning.md), for
loader tests.

The key names and shapes are the released files', built independently of our pretraining model so that a
drift in our model's names would be caught.
"""

from __future__ import annotations

import argparse
from pathlib import Path, PosixPath

import numpy as np
import torch

from fsfm.models.config import ViTConfig
from fsfm.models.vit import Block, ViTClassifier, ViTEncoder


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.clone() for k, v in module.state_dict().items()}


def _mlp_head(prefix: str, dim_in: int, hidden: int, dim_out: int) -> dict[str, torch.Tensor]:
    """BYOL-style projector/predictor: Linear -> LayerNorm -> ReLU -> Linear (indices 0, 1, 3)."""
    return {
        f"{prefix}0.weight": torch.randn(hidden, dim_in) * 0.02,
        f"{prefix}0.bias": torch.zeros(hidden),
        f"{prefix}1.weight": torch.ones(hidden),
        f"{prefix}1.bias": torch.zeros(hidden),
        f"{prefix}3.weight": torch.randn(dim_out, hidden) * 0.02,
        f"{prefix}3.bias": torch.zeros(dim_out),
    }


def official_pretrain_state(
    config: ViTConfig, decoder_dim: int = 32, decoder_depth: int = 2
) -> dict[str, torch.Tensor]:
    """The online network's ``model`` dict of ``checkpoint-N.pth``: encoder, ``norm``, ``mask_token``,
    rep decoder, projector, predictor and pixel decoder."""
    d, n = config.embed_dim, config.num_patches + 1
    encoder = ViTEncoder(config)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state |= {"norm.weight": torch.ones(d), "norm.bias": torch.zeros(d), "mask_token": torch.randn(1, 1, d) * 0.02}
    state |= {"rep_decoder_embed.weight": torch.randn(d, d) * 0.02, "rep_decoder_embed.bias": torch.zeros(d)}
    state["rep_decoder_pos_embed"] = torch.zeros(1, n, d)
    for i in range(2):
        state |= _prefixed(f"rep_decoder_blocks.{i}.", Block(d, config.num_heads))
    state |= {"rep_decoder_norm.weight": torch.ones(d), "rep_decoder_norm.bias": torch.zeros(d)}
    state |= {"rep_decoder_pred.weight": torch.randn(d, d) * 0.02, "rep_decoder_pred.bias": torch.zeros(d)}
    state |= _mlp_head("projector.projection_head.", d, 64, 16)
    state |= _mlp_head("predictor.projection_head.", 16, 64, 16)
    state |= {
        "decoder_embed.weight": torch.randn(decoder_dim, d) * 0.02,
        "decoder_embed.bias": torch.zeros(decoder_dim),
    }
    state["decoder_pos_embed"] = torch.zeros(1, n, decoder_dim)
    for i in range(decoder_depth):
        state |= _prefixed(f"decoder_blocks.{i}.", Block(decoder_dim, 2))
    state |= {"decoder_norm.weight": torch.ones(decoder_dim), "decoder_norm.bias": torch.zeros(decoder_dim)}
    patch_values = config.patch_size**2 * config.in_chans
    state |= {
        "decoder_pred.weight": torch.randn(patch_values, decoder_dim) * 0.02,
        "decoder_pred.bias": torch.zeros(patch_values),
    }
    return state


def official_args(**extra: object) -> argparse.Namespace:
    """``args`` as the official scripts pickle it: a Namespace holding pathlib paths."""
    return argparse.Namespace(
        output_dir=PosixPath("/data/output_dir"),
        log_dir=PosixPath("/data/output_dir"),
        model="fsfm_vit_base_patch16",
        **extra,
    )


FIXED_EMBEDDINGS = ("pos_embed", "decoder_pos_embed", "rep_decoder_pos_embed")  # sin-cos, requires_grad=False


def official_pretrain_optimizer(state: dict[str, torch.Tensor], steps: int = 2, seed: int = 0) -> dict:
    """The pretraining AdamW's ``state_dict`` as the official loop saves it: parameters in the official
    model's registration order (the ``model`` dict's key order), grouped as timm's ``add_weight_decay``
    ([1-D and biases without decay, the rest with 0.05]), fixed position embeddings left out; moments from
    ``steps`` steps on random gradients."""
    torch.manual_seed(seed)
    params = {k: torch.nn.Parameter(v.clone()) for k, v in state.items() if k not in FIXED_EMBEDDINGS}
    no_decay = [p for k, p in params.items() if p.ndim <= 1 or k.endswith(".bias")]
    decay = [p for k, p in params.items() if not (p.ndim <= 1 or k.endswith(".bias"))]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    for _ in range(steps):
        for param in params.values():
            param.grad = torch.randn_like(param)
        optimizer.step()
    return optimizer.state_dict()


def save_official(path: Path, state: dict[str, torch.Tensor], epoch: int = 400, optimizer: dict | None = None) -> Path:
    """``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` as the official training loops save it."""
    torch.save(
        {
            "model": state,
            "optimizer": optimizer or {"state": {}, "param_groups": []},
            "epoch": epoch,
            "scaler": {"scale": 65536.0},
            "args": official_args(),
        },
        path,
    )
    return path


def official_finetuned_state(config: ViTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DfD/DiFF fine-tuned ``model`` dict: encoder + ``fc_norm`` + ``head`` (no ``norm``), with a
    head large enough that outputs vary."""
    torch.manual_seed(seed)
    model = ViTClassifier(config, num_classes=2, global_pool=True)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    torch.nn.init.normal_(model.pos_embed, std=0.02)
    return {k: v.clone() for k, v in model.state_dict().items()}


def official_fas_checkpoint(path: Path, config: ViTConfig, threshold: float = 0.43, seed: int = 0) -> Path:
    """A face anti-spoofing ``<domain>_vit_0_shot_checkpoint_run_0.pth.tar`` as the official FAS code saves it
    (FLIP / few_shot_fas): ``{'epoch', 'state_dict', 'valid_arg', 'best_model_EER', 'best_model_ACER',
    'best_model_ACC', 'threshold'}``, the state under ``backbone.vit.`` (a global-pool ViT whose head is an
    Identity, so no head keys), ``embedder.bottleneck_layer_fc.`` (also listed as ``embedder.bottleneck_layer.0.``,
    the same module in its Sequential) and ``classifier.classifier_layer.`` (weight L2-normalised over the class
    axis by its last forward); the metrics as numpy scalars, as sklearn and numpy return them."""
    torch.manual_seed(seed)
    vit = ViTClassifier(config, num_classes=2, global_pool=True)
    torch.nn.init.normal_(vit.pos_embed, std=0.02)
    torch.nn.init.normal_(vit.fc_norm.weight, mean=1.0, std=0.1)
    state = {f"backbone.vit.{k}": v.clone() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    bottleneck_w, bottleneck_b = torch.randn(512, config.embed_dim) * 0.05, torch.full((512,), 0.1)
    classifier_w = torch.randn(2, 512) * 0.01
    classifier_w = classifier_w / torch.norm(classifier_w, 2, 0, True)
    state |= {"embedder.bottleneck_layer_fc.weight": bottleneck_w, "embedder.bottleneck_layer_fc.bias": bottleneck_b}
    state |= {"embedder.bottleneck_layer.0.weight": bottleneck_w, "embedder.bottleneck_layer.0.bias": bottleneck_b}
    state |= {"classifier.classifier_layer.weight": classifier_w, "classifier.classifier_layer.bias": torch.zeros(2)}
    metrics = [np.float64(0.3), torch.tensor(91.0), np.float64(0.05), np.float64(0.06), np.float64(0.98)]
    torch.save(
        {
            "epoch": 37,
            "state_dict": state,
            "valid_arg": [*metrics, np.float64(threshold), np.float64(94.0), np.float64(0.7)],
            "best_model_EER": 0.06,
            "best_model_ACER": 0.06,
            "best_model_ACC": np.float64(94.0),
            "threshold": np.float64(threshold),
        },
        path,
    )
    return path
