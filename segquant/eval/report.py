"""Reports of the evaluation harness: Markdown + JSON results table, PNG image grid, error plot."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def to_uint8_grid(images: torch.Tensor, nrow: int, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """Tile float images ``(N, C, H, W)`` in [0, 1] (C = 1 or 3) into a uint8 ``(rows·(H+pad), ..., C)`` array,
    ``nrow`` images per row."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, scale: int = 1) -> Path:
    """Save images ``(N, C, H, W)`` in [0, 1] as one PNG grid, enlarged ``scale`` times (nearest)."""
    from PIL import Image

    arr = to_uint8_grid(images, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
