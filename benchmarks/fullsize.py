"""Full-size denoiser configs with random weights (speed does not depend on the values) and their inputs.

``build(name, device, dtype)`` returns ``(model, example_kwargs)`` for ``sd35`` (SD3.5-medium
transformer, 1024², batch 2, 333 text tokens) or ``flux`` (FLUX.1-dev transformer, 1024², batch 1,
512 text tokens, guidance embeds). Weights are initialised directly on ``device`` in ``dtype``.
"""

from __future__ import annotations

import torch

SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX1_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


# Small versions of the same architectures (same code paths, CPU-sized) for a smoke test of a benchmark.
SMALL = {"sd35": dict(SD35_MEDIUM, num_layers=2, num_attention_heads=2, joint_attention_dim=128,
                      caption_projection_dim=128, pooled_projection_dim=64, dual_attention_layers=(0,)),
         "flux": dict(FLUX1_DEV, num_layers=1, num_single_layers=2, num_attention_heads=2,
                      joint_attention_dim=128, pooled_projection_dim=64)}


def sd35_inputs(config: dict, device, dtype, batch: int = 2, latent: int = 128, text_tokens: int = 333) -> dict:
    """SD3.5 transformer kwargs: latents ``(B, 16, latent, latent)``, text ``(B, T, joint dim)``, pooled."""
    return dict(hidden_states=torch.randn(batch, 16, latent, latent, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(batch, text_tokens, config["joint_attention_dim"], device=device,
                                                  dtype=dtype),
                pooled_projections=torch.randn(batch, config["pooled_projection_dim"], device=device, dtype=dtype),
                timestep=torch.full((batch,), 500.0, device=device), return_dict=False)


def flux_inputs(config: dict, device, dtype, batch: int = 1, latent: int = 128, text_tokens: int = 512) -> dict:
    """FLUX kwargs: packed latents ``(B, (latent/2)², 64)``, text ``(B, T, joint dim)``, pooled, ids, guidance."""
    tokens = (latent // 2) ** 2
    side = torch.arange(latent // 2, device=device)
    img_ids = torch.stack([torch.zeros_like(side).repeat_interleave(latent // 2),
                           side.repeat_interleave(latent // 2), side.repeat(latent // 2)], dim=-1).to(dtype)
    return dict(hidden_states=torch.randn(batch, tokens, 64, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(batch, text_tokens, config["joint_attention_dim"], device=device,
                                                  dtype=dtype),
                pooled_projections=torch.randn(batch, config["pooled_projection_dim"], device=device, dtype=dtype),
                timestep=torch.full((batch,), 0.5, device=device),
                guidance=torch.full((batch,), 3.5, device=device),
                img_ids=img_ids, txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype),
                return_dict=False)


def build(name: str, device="cuda", dtype=torch.bfloat16, seed: int = 0, small: bool = False):
    """``(model, example_kwargs)`` for ``sd35`` or ``flux`` with random weights, in eval mode.

    ``small``: the CPU-sized config of :data:`SMALL` with a 32² latent (for smoke tests of a benchmark).
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(seed)
    cls, config, inputs = {"sd35": (SD3Transformer2DModel, SD35_MEDIUM, sd35_inputs),
                           "flux": (FluxTransformer2DModel, FLUX1_DEV, flux_inputs)}[name]
    config = SMALL[name] if small else config
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    sizes = dict(latent=32, text_tokens=16) if small else {}
    return model.eval().requires_grad_(False), inputs(config, device, dtype, **sizes)
