"""ViT architecture configs (no PyTorch: manifests and the service read them too)."""

from __future__ import annotations

from pydantic import BaseModel


class ViTConfig(BaseModel):
    """Architecture of a ViT; stored in checkpoints and model manifests."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def flops_per_image(self) -> int:
        """Multiply-adds x 2 of one forward pass (patch embed, blocks; heads are negligible)."""
        n, d = self.num_patches + 1, self.embed_dim
        hidden = int(d * self.mlp_ratio)
        patch = self.num_patches * d * self.in_chans * self.patch_size**2
        per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * hidden
        return 2 * (patch + self.depth * per_block)


# The encoders of the FSFM paper (arXiv 2412.12032; docs/pretraining.md) plus a tiny one for CPU demos.
VIT_PRESETS: dict[str, ViTConfig] = {
    "fsfm_vit_tiny_patch16": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "fsfm_vit_small_patch16": ViTConfig(embed_dim=384, depth=12, num_heads=12),
    "fsfm_vit_base_patch16": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "fsfm_vit_large_patch16": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "fsfm_vit_huge_patch14": ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}


def vit_preset(name: str, **overrides: object) -> ViTConfig:
    """A preset by name, optionally with fields replaced (e.g. ``depth=2`` for tests)."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose from {sorted(VIT_PRESETS)}")
    return VIT_PRESETS[name].model_copy(update=overrides)
