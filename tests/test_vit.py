"""The FSFM ViT: architecture facts from the FSFM paper (arXiv 2412.12032) and the released checkpoints, and
loading of official checkpoint layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsfm.models.checkpoints import (
    classifier_from_pretrained,
    classifier_from_state,
    encoder_state,
    infer_vit_config,
    load_checkpoint,
    model_state,
)
from fsfm.models.config import vit_preset
from fsfm.models.pos_embed import sincos_2d
from fsfm.models.vit import ViTClassifier, ViTEncoder
from tests.official_format import official_finetuned_state, official_pretrain_state, save_official

TINY = vit_preset("fsfm_vit_tiny_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2)


def test_vit_base_matches_the_spec() -> None:
    config = vit_preset("fsfm_vit_base_patch16")
    model = ViTClassifier(config)
    state = model.state_dict()
    # The released fine-tuned ViT-B/16 has 85,800,194 parameters and no final `norm`.
    assert sum(v.numel() for v in state.values()) == 85_800_194
    assert not any(k.startswith("norm.") for k in state)
    assert state["blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert state["pos_embed"].shape == (1, 197, 768)
    # The paper's ViT-B/16 pretraining encoder (fixed sin-cos pos-emb, plus its final norm) ≈ 85.6 M trainable.
    trainable = sum(p.numel() for p in ViTEncoder(config).parameters() if p.requires_grad)
    assert trainable + 2 * 768 == pytest.approx(85.6e6, rel=0.001)
    assert config.flops_per_image() == pytest.approx(35.1e9, rel=0.01)  # 17.6 GMAC


def test_sincos_position_embedding() -> None:
    emb = sincos_2d(16, 4)
    assert emb.shape == (17, 16)
    assert np.all(emb[0] == 0)  # cls row
    grid = emb[1:].reshape(4, 4, 16)
    # First half encodes the column, second half the row.
    assert np.allclose(grid[0, :, :8], grid[3, :, :8]) and not np.allclose(grid[:, 0, :8], grid[:, 3, :8])
    assert np.allclose(grid[:, 0, 8:], grid[:, 3, 8:]) and not np.allclose(grid[0, :, 8:], grid[3, :, 8:])
    # sin/cos halves of each 1-D embedding: sin(0) = 0, cos(0) = 1 at position 0.
    assert np.allclose(grid[0, 0, :4], 0) and np.allclose(grid[0, 0, 4:8], 1)


def test_global_pool_is_mean_of_patch_tokens() -> None:
    torch.manual_seed(0)
    model = ViTClassifier(TINY).eval()
    x = torch.randn(3, 3, 64, 64)
    tokens = ViTEncoder.forward(model, x)
    expected = model.head(model.fc_norm(tokens[:, 1:].mean(1)))
    assert torch.allclose(model(x), expected)


def test_official_pretrain_checkpoint_loads_into_a_classifier(tmp_path) -> None:
    torch.manual_seed(1)
    state = official_pretrain_state(TINY)
    path = save_official(tmp_path / "checkpoint-400.pth", state)
    ckpt = load_checkpoint(path)  # weights_only with Namespace/PosixPath allow-listed
    assert ckpt["epoch"] == 400 and str(ckpt["args"].output_dir) == "/data/output_dir"
    loaded = model_state(ckpt)
    enc = encoder_state(loaded)
    assert set(enc) == {k for k in state if k.startswith(("cls_token", "pos_embed", "patch_embed.", "blocks."))}
    assert infer_vit_config(loaded) == TINY.model_copy(update={"num_heads": TINY.embed_dim // 64 or 1})
    model = classifier_from_pretrained(loaded, config=TINY)
    for key in ("blocks.1.mlp.fc2.weight", "patch_embed.proj.weight", "cls_token", "pos_embed"):
        assert torch.equal(model.state_dict()[key], state[key])
    assert model.pos_embed.requires_grad  # learnable in fine-tuning


def test_pretrained_pos_embed_is_interpolated_to_a_new_grid() -> None:
    state = official_pretrain_state(TINY)
    bigger = TINY.model_copy(update={"img_size": 96})
    model = classifier_from_pretrained(state, config=bigger)
    assert model.pos_embed.shape == (1, 1 + 36, TINY.embed_dim)
    assert torch.equal(model.pos_embed[:, 0], state["pos_embed"][:, 0])


def test_mismatched_pretrained_weights_are_refused() -> None:
    state = official_pretrain_state(TINY)
    del state["blocks.1.attn.qkv.weight"]
    with pytest.raises(ValueError, match="missing"):
        classifier_from_pretrained(state, config=TINY)


def test_official_finetuned_checkpoint_loads_strictly(tmp_path) -> None:
    state = official_finetuned_state(TINY)
    path = save_official(tmp_path / "checkpoint-min_val_loss.pth", state, epoch=7)
    model = classifier_from_state(model_state(load_checkpoint(path)), num_heads=2)
    reference = ViTClassifier(TINY).eval()
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), reference(x))


def test_pretraining_checkpoint_is_not_a_classifier() -> None:
    with pytest.raises(ValueError, match="fine-tun"):
        classifier_from_state(official_pretrain_state(TINY))
