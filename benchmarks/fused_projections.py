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


def fuse_projections(denoiser: torch.nn.Module, run: Callable[[], object]) -> list[str]:
    """``denoiser.fuse_qkv_projections()`` in place, then drop the ``nn.Linear`` layers that ``run()`` (one
    forward or generation step) no longer calls — diffusers keeps the separate projections next to the fused
    one, which would double their weight memory and cannot be calibrated. SD3.5's second (image-only) attention
    keeps its separate projections: diffusers 0.42's fused processor expects a text stream there. Returns the
    names of the dropped layers."""
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0, JointAttnProcessor2_0

    denoiser.fuse_qkv_projections()
    for name, module in denoiser.named_modules():
        if name.endswith("attn2") and isinstance(getattr(module, "processor", None), FusedJointAttnProcessor2_0):
            module.set_processor(JointAttnProcessor2_0())
    called: set[str] = set()
    linears = {name: m for name, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)}
    hooks = [m.register_forward_hook(lambda *_, name=name: called.add(name)) for name, m in linears.items()]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    unused = sorted(set(linears) - called)
    for name in unused:
        parent, _, child = name.rpartition(".")
        setattr(denoiser.get_submodule(parent), child, None)
    return unused


def fused_config(config: dict, denoiser: torch.nn.Module, search_alpha: bool = False) -> dict:
    """A copy of ``config`` (the dict language) with the fused projections of ``denoiser`` kept whole (no
    SegPattern: one smoothing for q, k, v); ``search_alpha``: their SmoothQuant alpha searched on 0, 0.1, ..., 1
    (by the fused layer's output error) instead of the config's."""
    config = copy.deepcopy(config)
    names = [name for name, _ in denoiser.named_modules()]
    rule_config: dict = {"search_patterns": []}
    if search_alpha:
        rule_config["opt"] = {"search_alpha_config": {"enable": True, "min": 0.0, "max": 1.0, "step": 0.1}}
    for rule in FUSED_LAYERS:
        if any(fnmatch(name, rule) for name in names):
            config[rule] = rule_config
    return config
