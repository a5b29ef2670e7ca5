"""Fixed 2-D sine-cosine position embeddings (MAE's formula), in numpy so any side can use them."""

from __future__ import annotations

import numpy as np


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim): half the channels sin, half cos, omega = 1/10000^(2i/dim)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)  # (M, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """(grid², dim) or (1 + grid², dim) with a zero row for the cls token.

    The first half of the channels encodes the column (x) coordinate's grid row index as MAE does:
    MAE builds ``meshgrid(w, h)`` and embeds grid[0] (w) with the first half.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # each (grid, grid); grid_w varies along columns
    emb = np.concatenate([sincos_1d(dim // 2, grid_w), sincos_1d(dim // 2, grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)
