"""Regional compilation: ``torch.compile`` each repeated block of a denoiser instead of the whole model.

The blocks of a transformer (or the resnets of a UNet stage) share one ``forward``: with dynamo's
inlined ``nn.Module`` parameters, the first block's graph is reused by the others, so the first call
compiles a few graphs instead of one huge one (seconds instead of minutes), at the same run time.
This is diffusers' ``compile_repeated_blocks`` idea, but found from the module tree, so it also works
for models that do not declare ``_repeated_blocks`` (e.g. ``SD3Transformer2DModel``) and for models
whose linears were replaced by ``SegLinear``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("segquant.pipeline.regional_compile")


def repeated_block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost ``nn.ModuleList``s whose (>= 2) children all have one class."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(name == outer or name.startswith(outer + ".") for outer in found):
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            found.append(name)
    return found


def compile_repeated_blocks(model: nn.Module, **compile_kwargs: Any) -> list[str]:
    """Compile every block of ``model``'s repeated-block lists in place; returns the list names.

    ``compile_kwargs`` go to ``torch.compile`` (e.g. ``fullgraph=True``, ``mode="max-autotune-no-cudagraphs"``).
    Raises ``ValueError`` when the model has no repeated blocks (compile it whole instead).
    """
    lists = repeated_block_lists(model)
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of repeated blocks to compile regionally; "
                         "use torch.compile(model) instead")
    blocks = 0
    for name in lists:
        for block in model.get_submodule(name):
            block.compile(**compile_kwargs)
            blocks += 1
    # Blocks of one list may differ slightly (e.g. SD3.5's dual-attention layers): allow their variants.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    logger.info("compiled %d blocks of %s", blocks, ", ".join(lists))
    return lists
