"""Latent layouts: the (channel, row, column) grid a per-step correction is fitted on.

4-D latents (SD3, SDXL, demo models) are ``(B, C, H, W)``: the grid is ``(C, H, W)``.
FLUX's packed latents are ``(B, S, C)`` with ``S = h * w`` tokens, one token per 2×2 latent patch and
``C = 4 c`` packed channels. They are **unpacked to the token grid**: ``(B, S, C) -> (B, C, h, w)``
(token ``s`` sits at row ``s // w``, column ``s % w``, the order FLUX packs in). So for packed latents
a correction's ``blocksize`` counts tokens (one token = 2×2 latent pixels) and ``blocksize=1`` is still
per element (each packed channel of each token). ``h``, ``w`` come from the call's ``img_ids`` when the
fitting sees them, else ``packed_grid`` of the config, else the square ``h = w = sqrt(S)``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from segquant.errors import ConfigError


def packed_grid(sample: Tensor, inputs: dict[str, Any] | None = None,
                given: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """``(h, w)`` token grid of a packed ``(B, S, C)`` sample (``None`` for a 4-D sample).

    Order of sources: ``given``; the call's ``img_ids`` ((S, 3) or (B, S, 3): rows, columns in
    columns 1, 2); a square grid. Raises ``ConfigError`` when none applies.
    """
    if sample.ndim != 3:
        return None
    tokens = int(sample.shape[1])
    if given is not None:
        h, w = int(given[0]), int(given[1])
    elif inputs is not None and isinstance(inputs.get("img_ids"), Tensor):
        ids = inputs["img_ids"].reshape(-1, inputs["img_ids"].shape[-1])[:tokens]
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    else:
        h = w = math.isqrt(tokens)
    if h * w != tokens:
        raise ConfigError(f"packed latents with {tokens} tokens do not fill a {h}x{w} grid; "
                          "give packed_grid=(h, w) in the config")
    return h, w


def to_grid(sample: Tensor, grid: tuple[int, int] | None) -> Tensor:
    """``(B, C, H, W)`` view of a sample: 4-D unchanged, packed ``(B, S, C)`` -> ``(B, C, h, w)``."""
    if sample.ndim == 4:
        return sample
    if sample.ndim != 3 or grid is None:
        raise ConfigError(f"latent of shape {tuple(sample.shape)}: expected (B, C, H, W) or packed (B, S, C)")
    b, s, c = sample.shape
    return sample.transpose(1, 2).reshape(b, c, grid[0], grid[1])


def from_grid(grid_sample: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`to_grid`: back to the layout of ``like`` (same shape as ``like``)."""
    if like.ndim == 4:
        return grid_sample
    b, s, c = like.shape
    return grid_sample.reshape(b, c, s).transpose(1, 2)
