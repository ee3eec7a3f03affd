"""q / k / v projections fused into one layer that is quantized with one smoothing (the fastest W8A8 on the GPU).

diffusers' ``fuse_qkv_projections()`` concatenates an attention's ``to_q`` / ``to_k`` / ``to_v`` into ``to_qkv``
(``add_*_proj`` into ``to_added_qkv`` for a joint block's text stream; ``to_k`` / ``to_v`` into ``to_kv`` for a
UNet's cross-attention) and splits the fused output. Kept whole (no SegPattern on it), the fused layer has one
SmoothQuant ``λ`` and one input scale for the three projections: the tensor they read is quantized once and they run
as one GEMM (BENCHMARKS.md runs 12-13: FLUX.1-dev INT8 1.75 ms faster out of 101 on an H200, SD3.5-medium FP8 2 %
faster). Quality ("One smoothing for q / k / v"): with INT8 inputs no measurable cost (0.05 ± 0.07 dB image PSNR on
the demo models); with FP8 E4M3 inputs 0.6 dB on the FLUX and UNet demo models, nothing measurable on the SD3 one;
at W4A8 (one rank-32 branch for the three) 1.2 dB on the SD3 and FLUX ones.

    rules = fuse_projections(transformer, example)           # in place; example: as quantize() takes it
    config = {**preset_dict("w8a8"), **rules}                 # the fused layers kept whole
    quantize(transformer, loader, config)
    # or in one step: quantize(transformer, loader, {**preset_dict("w8a8"), "fuse_projections": True})
    save_quantized(transformer, "ckpt")                       # load_quantized("ckpt") fuses the rebuilt model

The separate projections diffusers keeps next to the fused ones are dropped (set to ``None``): the forward no longer
calls them, they cannot be calibrated and would double the weight memory. Their names are kept in
``model.segquant_dropped_layers`` so that a checkpoint rebuilds the same model (:func:`repeat_fusion`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segquant.config_rules import FUSED_FROM, QuantConfig, rule_matches

logger = logging.getLogger("segquant.models.fusion")

#: The layers diffusers' fusion creates: a rule per name that the model has, ``{"search_patterns": []}``.
FUSED_LAYER_RULES = tuple(f"*{fused}" for fused in FUSED_FROM)
#: Attribute of a fused model: the names of the dropped projections (saved with a quantized checkpoint).
DROPPED_ATTRIBUTE = "segquant_dropped_layers"


def fuse_projections(denoiser: nn.Module, example: Any | Callable[[], Any]) -> dict[str, dict]:
    """Fuse the q / k / v projections of a diffusers ``denoiser`` in place and drop the separate projections
    that one forward on ``example`` (a Tensor, a tuple of positional arguments or a dict of keyword arguments, as
    :func:`segquant.quantize` takes it; or a function without arguments that calls the denoiser, e.g. one step of
    its pipeline) no longer calls.

    Returns the config rules that keep each fused layer whole (one smoothing for q, k and v): merge them into the
    config given to :func:`segquant.quantize`. Raises ``TypeError`` for a model without ``fuse_qkv_projections``
    and ``ValueError`` for one that is already quantized or fused."""
    from segquant.calibration import run_batch

    _check_fusable(denoiser)
    _fuse(denoiser)
    replaced = _replaced_projections(denoiser)
    called: set[str] = set()
    hooks = [module.register_forward_hook(lambda *_, name=name: called.add(name)) for name, module in replaced.items()]
    try:
        with torch.inference_mode():
            example() if callable(example) else run_batch(denoiser, example)
    finally:
        for hook in hooks:
            hook.remove()
    _drop(denoiser, sorted(set(replaced) - called))
    return fused_layer_rules(denoiser)


def fused_config(denoiser: nn.Module, config: QuantConfig, example: Any) -> QuantConfig:
    """``config`` as :func:`segquant.quantize` applies it: with ``fuse_projections``, ``denoiser`` fused in place
    (:func:`fuse_projections` on ``example``; a model fused before is kept as it is) and the fused layers kept
    whole. A model without ``fuse_qkv_projections`` (not a diffusers denoiser) is left unfused, with a warning."""
    if not config.fuse_projections:
        return config
    if not callable(getattr(denoiser, "fuse_qkv_projections", None)):
        logger.warning("%s has no fuse_qkv_projections(): its projections stay separate (fuse_projections ignored)",
                       type(denoiser).__name__)
        return config
    return config.with_rules(fused_layer_rules(denoiser) if is_fused(denoiser) else fuse_projections(denoiser, example))


def repeat_fusion(denoiser: nn.Module, dropped: Sequence[str]) -> None:
    """Repeat :func:`fuse_projections` on an unfused model of the same architecture (e.g. one rebuilt on the meta
    device to load a checkpoint) without running it: fuse, then drop the layers named in ``dropped``. Raises
    ``ValueError`` before any change if a name is not a linear layer of ``denoiser``."""
    _check_fusable(denoiser)
    names = {name for name, module in denoiser.named_modules() if isinstance(module, nn.Linear)}
    missing = [name for name in dropped if name not in names]
    if missing:
        raise ValueError(f"{type(denoiser).__name__} has no linear layers {missing[:3]} to drop after fusing: "
                         "another architecture?")
    _fuse(denoiser)
    _drop(denoiser, list(dropped))


def fused_layer_rules(denoiser: nn.Module) -> dict[str, dict]:
    """``{rule: {"search_patterns": []}}`` for each of :data:`FUSED_LAYER_RULES` that names a layer of
    ``denoiser`` (a rule matching nothing would only draw a warning)."""
    names = [name for name, module in denoiser.named_modules() if isinstance(module, nn.Linear)]
    return {rule: {"search_patterns": []} for rule in FUSED_LAYER_RULES
            if any(rule_matches(rule, name) for name in names)}


def _check_fusable(denoiser: nn.Module) -> None:
    from segquant.kernels.backend import seglinear_modules

    if not callable(getattr(denoiser, "fuse_qkv_projections", None)):
        raise TypeError(f"{type(denoiser).__name__} has no fuse_qkv_projections(): only diffusers denoisers with "
                        "fusable attention projections can be fused")
    if any(True for _ in seglinear_modules(denoiser)):
        raise ValueError(f"{type(denoiser).__name__} is already quantized: fuse its projections before quantize()")
    if is_fused(denoiser):
        raise ValueError(f"{type(denoiser).__name__}'s projections are already fused")


def is_fused(denoiser: nn.Module) -> bool:
    """Whether ``denoiser``'s projections are fused (by :func:`fuse_projections`, or it has fused layers)."""
    return getattr(denoiser, DROPPED_ATTRIBUTE, None) is not None or bool(fused_layer_rules(denoiser))


def _fuse(denoiser: nn.Module) -> None:
    """diffusers' fusion, with SD3's fused joint processor replaced by :class:`FusedJointAttnProcessor`."""
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0

    with torch.no_grad():
        denoiser.fuse_qkv_projections()
    for module in denoiser.modules():
        if isinstance(getattr(module, "processor", None), FusedJointAttnProcessor2_0):
            module.set_processor(FusedJointAttnProcessor())


class FusedJointAttnProcessor:
    """SD3's joint attention on the fused ``to_qkv`` / ``to_added_qkv``, with the q / k norms (SD3.5's
    ``qk_norm``) that diffusers 0.42's ``FusedJointAttnProcessor2_0`` leaves out, and without a text stream (SD3.5's
    image-only second attention). Otherwise diffusers' ``JointAttnProcessor2_0``: image tokens first, then text.

    ``hidden_states``: (B, S_image, D); ``encoder_hidden_states``: (B, S_text, D_text) or ``None``.
    Returns (B, S_image, D), and the text stream's (B, S_text, D) when it is given."""

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        image_tokens = hidden_states.shape[1]
        query, key, value = _split_heads(attn, attn.to_qkv(hidden_states), attn.norm_q, attn.norm_k)
        if encoder_hidden_states is not None:
            text = _split_heads(attn, attn.to_added_qkv(encoder_hidden_states), attn.norm_added_q, attn.norm_added_k)
            query, key, value = (torch.cat(pair, dim=2) for pair in zip((query, key, value), text))
        mixed = torch.nn.functional.scaled_dot_product_attention(query, key, value)
        mixed = mixed.transpose(1, 2).flatten(2).to(query.dtype)  # (B, S, heads · head_dim)
        image = attn.to_out[1](attn.to_out[0](mixed[:, :image_tokens]))
        if encoder_hidden_states is None:
            return image
        text_out = mixed[:, image_tokens:]
        return image, (text_out if attn.context_pre_only else attn.to_add_out(text_out))


def _split_heads(attn: nn.Module, qkv: torch.Tensor, norm_q: nn.Module | None, norm_k: nn.Module | None):
    """(B, S, 3 · heads · head_dim) -> q, k, v of (B, heads, S, head_dim); q and k normalized where norms exist."""
    query, key, value = (part.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for part in qkv.chunk(3, dim=-1))
    return (query if norm_q is None else norm_q(query), key if norm_k is None else norm_k(key), value)


def _replaced_projections(denoiser: nn.Module) -> dict[str, nn.Linear]:
    """The separate projections of every attention that has a fused layer (name -> layer): the candidates to drop."""
    found = {}
    for name, module in denoiser.named_modules():
        fused = {child for child in FUSED_FROM if isinstance(getattr(module, child, None), nn.Linear)}
        for child in set().union(*(FUSED_FROM[child] for child in fused)):
            if isinstance(getattr(module, child, None), nn.Linear):
                found[f"{name}.{child}" if name else child] = getattr(module, child)
    return found


def _drop(denoiser: nn.Module, names: list[str]) -> None:
    """Set each named layer to ``None`` and record the names on ``denoiser``."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(denoiser.get_submodule(parent), child, None)
    setattr(denoiser, DROPPED_ATTRIBUTE, names)
