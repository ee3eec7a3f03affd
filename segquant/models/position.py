"""SD3's sin-cos position table cropped to the images a deployment generates: the same outputs, less memory.

diffusers' ``PatchEmbed`` (SD3 / SD3.5) holds a float32 table for ``pos_embed_max_size²`` patch positions and adds
its central ``h × w`` crop to an image of ``h × w`` patches. SD3.5-medium's table covers 384² positions (6144²
pixels): 0.91 GB, as much as 40 % of an 8-bit transformer's linear weights, of which a 1024² image uses 64². Its
central ``S × S`` part, with ``S`` of the same parity as the full size, gives every image of up to ``S × S``
patches exactly the crop the full table gives (the offset ``(M − h) // 2`` of the full table is ``(M − S) / 2``
plus the offset ``(S − h) // 2`` of the smaller one), so :func:`crop_position_tables` changes no output of the
sizes it keeps; a larger image raises diffusers' own ``ValueError`` naming the limit.

Call it at run time, after loading (as :func:`segquant.sigmoid_form_gelus`): the cropped table is a persistent
buffer of another shape, so a stock checkpoint no longer loads into the cropped model.

    crop_position_tables(pipe.transformer, max_image_size=2048)   # returns the bytes freed
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def crop_position_tables(model: nn.Module, max_image_size: int | tuple[int, int], vae_scale_factor: int = 8) -> int:
    """Crop every SD3-style position table in ``model`` (a module with ``pos_embed_max_size`` and a ``pos_embed``
    buffer ``(1, M², D)``) to the central ``S × S`` positions that images of up to ``max_image_size`` pixels (an
    int, or ``(height, width)``) use, given the VAE's ``vae_scale_factor``. In place; returns the bytes freed."""
    height, width = (max_image_size, max_image_size) if isinstance(max_image_size, int) else max_image_size
    if min(height, width, vae_scale_factor) < 1:
        raise ValueError(f"crop_position_tables: max_image_size={max_image_size} and vae_scale_factor="
                         f"{vae_scale_factor} must be positive")
    freed = 0
    for module in model.modules():
        full = getattr(module, "pos_embed_max_size", None)
        table = getattr(module, "pos_embed", None)
        if not full or not hasattr(module, "patch_size") or not isinstance(table, Tensor) or table.ndim != 3:
            continue
        kept = _kept_positions(max(height, width), vae_scale_factor * module.patch_size, full)
        if kept >= full:
            continue
        offset = (full - kept) // 2
        grid = table.reshape(1, full, full, table.shape[-1])[:, offset:offset + kept, offset:offset + kept]
        module.register_buffer("pos_embed", grid.reshape(1, kept * kept, table.shape[-1]).clone())
        module.pos_embed_max_size = kept
        freed += table.numel() * table.element_size() - module.pos_embed.numel() * module.pos_embed.element_size()
    return freed


def _kept_positions(pixels: int, pixels_per_patch: int, full: int) -> int:
    """Positions per side an image of up to ``pixels`` needs, rounded up to the parity of ``full``."""
    needed = math.ceil(pixels / pixels_per_patch)
    return needed + (needed - full) % 2
