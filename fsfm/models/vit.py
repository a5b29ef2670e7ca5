"""The FSFM Vision Transformer: encoder and classifier, with the official checkpoints' key names.

The layout follows MAE's reference ViT (pre-norm blocks, qkv with bias, LayerNorm eps 1e-6, fixed
2-D sin-cos position embedding at pretraining) so that official FSFM state dicts load without
renaming: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*`` (encoder / cls-token mode) or ``fc_norm.*`` +
``head.*`` (global-pool classifier).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fsfm.models.config import VIT_PRESETS, ViTConfig, vit_preset
from fsfm.models.pos_embed import sincos_2d

__all__ = ["VIT_PRESETS", "ViTClassifier", "ViTConfig", "ViTEncoder", "vit_preset"]


LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> patch tokens (B, L, D) through a stride-p convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval time)."""

    def __init__(self, prob: float) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """Patch embedding + cls token + position embedding + transformer blocks.

    ``learnable_pos_embed=False`` is the pretraining setting (fixed sin-cos); fine-tuning makes it
    learnable, initialised from the checkpoint.
    """

    def __init__(self, config: ViTConfig, drop_path_rate: float = 0.0, learnable_pos_embed: bool = False) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(
            torch.from_numpy(sincos_2d(d, config.grid_size)).unsqueeze(0), requires_grad=learnable_pos_embed
        )
        rates = torch.linspace(0, drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(Block(d, config.num_heads, config.mlp_ratio, r) for r in rates)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the conv as a linear layer
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_vit_weights)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, D) patch tokens with their position embedding (no cls yet)."""
        return self.patch_embed(images) + self.pos_embed[:, 1:, :]

    def prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)  # (B, 1 + L, D)

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + L, D) tokens after the last block (no final norm)."""
        return self.run_blocks(self.prepend_cls(self.embed(images)))


class ViTClassifier(ViTEncoder):
    """FSFM's fine-tuned classifier: encoder -> pooled feature -> LayerNorm -> Linear head.

    global_pool=True (the paper's setting): mean of the patch tokens (cls excluded) -> ``fc_norm``.
    global_pool=False: the cls token after the final ``norm``. Subclassing the encoder keeps the
    state-dict keys flat (``blocks.0...``), exactly as in the official checkpoints.
    """

    def __init__(
        self,
        config: ViTConfig,
        num_classes: int = 2,
        global_pool: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(config, drop_path_rate=drop_path_rate, learnable_pos_embed=True)
        self.global_pool = global_pool
        d = config.embed_dim
        if global_pool:
            self.fc_norm = LayerNorm(d)
        else:
            self.norm = LayerNorm(d)
        self.head = nn.Linear(d, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) pooled, normalised feature."""
        tokens = super().forward(images)  # (B, 1 + L, D)
        if self.global_pool:
            return self.fc_norm(tokens[:, 1:, :].mean(dim=1))
        return self.norm(tokens)[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits."""
        return self.head(self.forward_features(images))
