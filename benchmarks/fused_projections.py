"""The q / k / v projections of a diffusers denoiser fused into one layer, quantized with one smoothing.

diffusers' ``fuse_qkv_projections()`` concatenates ``to_q``, ``to_k``, ``to_v`` into ``to_qkv`` (``to_added_qkv``
for a joint block's text stream, ``to_kv`` for a UNet's cross-attention) and splits its output. Kept whole (no
SegPattern on it), the fused layer has one SmoothQuant ``λ`` and one input scale for the three projections, so the
tensor they read is quantized once and they run as one GEMM; with the split as output segments it keeps a ``λ``
per projection (the unfused model's numerics, three quantized copies). Used by ``shared_smoothing.py`` (quality)
and ``e2e_w8a8.py``'s ``*_fused`` variants (speed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from fnmatch import fnmatch

import torch

#: diffusers' fused projections; a rule that matches no layer of the model is left out.
FUSED_LAYERS = ("*to_qkv", "*to_added_qkv", "*to_kv")


def fuse_projections(denoiser: torch.nn.Module) -> None:
    """``denoiser.fuse_qkv_projections()``, except for SD3.5's second (image-only) attention, whose fused processor
    in diffusers 0.42 expects a text stream: it keeps its separate projections."""
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0, JointAttnProcessor2_0

    denoiser.fuse_qkv_projections()
    for name, module in denoiser.named_modules():
        if name.endswith("attn2") and isinstance(getattr(module, "processor", None), FusedJointAttnProcessor2_0):
            module.set_processor(JointAttnProcessor2_0())


def unused_linears(denoiser: torch.nn.Module, run: Callable[[], object]) -> list[str]:
    """Names of the denoiser's ``nn.Linear`` layers that ``run()`` (one forward or generation step) does not call:
    what fusing left behind, since diffusers keeps the separate projections next to the fused one."""
    called: set[str] = set()
    linears = {name: m for name, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)}
    hooks = [m.register_forward_hook(lambda *_, name=name: called.add(name)) for name, m in linears.items()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return sorted(set(linears) - called)


def fused_config(config: dict, denoiser: torch.nn.Module, unused: list[str], shared: bool = True) -> dict:
    """A copy of ``config`` (the dict language) for the fused ``denoiser``: the ``unused`` layers not quantized,
    and when ``shared`` the fused projections kept whole (no SegPattern: one smoothing for q, k, v)."""
    config = copy.deepcopy(config)
    config.update({name: {"enable": False} for name in unused})
    names = [name for name, _ in denoiser.named_modules()]
    for rule in FUSED_LAYERS if shared else ():
        if any(fnmatch(name, rule) for name in names):
            config[rule] = {"search_patterns": []}
    return config
