"""Example forward inputs for stock diffusers denoisers, derived from ``model.config`` alone.

Used for graph capture (``segquant inspect``, ``quantize(example=None)`` of a folder model) when no real
calibration batch is at hand. Values are random; only shapes and dtypes matter for the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TEXT_TOKENS = 8


def example_inputs_for(model: nn.Module, batch: int = 1, seed: int = 0, latent_size: int | None = None
                       ) -> dict[str, Any]:
    """Keyword arguments for ``model(**kwargs)`` (with ``return_dict=False``) of a diffusers denoiser.

    Supports SD3 / FLUX transformers and their ControlNets, ``UNet2DConditionModel`` (incl. SDXL's
    ``text_time`` added embeddings) and ``PixArtTransformer2DModel``. ``latent_size`` overrides the
    config's ``sample_size`` (spatial size of the latent; FLUX: of the unpacked latent).
    """
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    name = type(model).__name__
    size = latent_size or getattr(cfg, "sample_size", None) or 64
    if name.startswith("Flux"):
        inputs = _flux(cfg, rand, batch, size)
        if "ControlNet" in name:
            inputs["controlnet_cond"] = rand(*inputs["hidden_states"].shape)
        return inputs
    if name.startswith("SD3"):
        inputs = {"hidden_states": rand(batch, cfg.in_channels, size, size),
                  "encoder_hidden_states": rand(batch, TEXT_TOKENS, cfg.joint_attention_dim),
                  "pooled_projections": rand(batch, cfg.pooled_projection_dim),
                  "timestep": torch.full((batch,), 500.0)}
        if "ControlNet" in name:
            inputs["controlnet_cond"] = rand(batch, cfg.in_channels, size, size)
        return {**inputs, "return_dict": False}
    if name in ("UNet2DConditionModel", "ControlNetModel"):
        return _unet(cfg, rand, batch, size, controlnet=name == "ControlNetModel")
    if name.startswith("PixArt"):
        return {"hidden_states": rand(batch, cfg.in_channels, size, size),
                "encoder_hidden_states": rand(batch, TEXT_TOKENS, cfg.caption_channels),
                "timestep": torch.full((batch,), 500.0),
                "added_cond_kwargs": {"resolution": torch.full((batch, 2), 8.0 * size),
                                      "aspect_ratio": torch.ones(batch, 1)},
                "return_dict": False}
    raise ValueError(f"no example-input recipe for {name}; pass example= (a kwargs dict) explicitly")


def _flux(cfg: Any, rand, batch: int, size: int) -> dict[str, Any]:
    h = w = max(size // 2, 1)
    image_ids = torch.zeros(h, w, 3)
    image_ids[..., 1] = torch.arange(h)[:, None]
    image_ids[..., 2] = torch.arange(w)[None, :]
    inputs = {"hidden_states": rand(batch, h * w, cfg.in_channels),
              "encoder_hidden_states": rand(batch, TEXT_TOKENS, cfg.joint_attention_dim),
              "pooled_projections": rand(batch, cfg.pooled_projection_dim),
              "timestep": torch.full((batch,), 0.5), "img_ids": image_ids.reshape(h * w, 3),
              "txt_ids": torch.zeros(TEXT_TOKENS, 3), "return_dict": False}
    if getattr(cfg, "guidance_embeds", False):
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def _unet(cfg: Any, rand, batch: int, size: int, controlnet: bool) -> dict[str, Any]:
    cross_dim = cfg.cross_attention_dim
    cross_dim = cross_dim[0] if isinstance(cross_dim, (list, tuple)) else cross_dim
    inputs = {"sample": rand(batch, cfg.in_channels, size, size), "timestep": torch.tensor(500.0),
              "encoder_hidden_states": rand(batch, TEXT_TOKENS, cross_dim), "return_dict": False}
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        time_ids = cfg.addition_time_embed_dim * 6
        inputs["added_cond_kwargs"] = {
            "text_embeds": rand(batch, cfg.projection_class_embeddings_input_dim - time_ids),
            "time_ids": torch.tensor([[8.0 * size, 8.0 * size, 0.0, 0.0, 8.0 * size, 8.0 * size]]).repeat(batch, 1)}
    if controlnet:
        inputs["controlnet_cond"] = rand(batch, cfg.conditioning_channels, 8 * size, 8 * size)
    return inputs
