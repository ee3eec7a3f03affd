"""Tiny, deterministic instances of real diffusers denoisers, built from config on CPU.

These are the structural testbeds of DESIGN.md §4: the *exact* diffusers classes (so graph capture,
pattern matching and module swapping see the real code paths) at a size where one forward pass
takes a few milliseconds on CPU. Nothing is downloaded.

Weights are random but deterministic (``torch.manual_seed(seed)`` before construction, inside
``torch.random.fork_rng`` so the caller's RNG state is not disturbed). Layers that
diffusers zero-initialises (ControlNet output blocks, ``pos_embed_input``, ``controlnet_x_embedder``)
are re-filled with small seeded random values so that every linear layer has a non-degenerate range.

``diffusers`` is imported inside the functions only, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

TINY_MODELS: tuple[str, ...] = (
    "sd3",
    "flux",
    "unet",
    "pixart",
    "sd3_controlnet",
    "flux_controlnet",
    "controlnet",
)

# Shared tiny sizes.
_HEADS, _HEAD_DIM = 2, 8  # inner dim 16
_SD3 = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=_HEAD_DIM,
    num_attention_heads=_HEADS,
    joint_attention_dim=32,
    caption_projection_dim=16,  # must equal heads * head_dim for the joint blocks
    pooled_projection_dim=24,
    out_channels=4,
    pos_embed_max_size=8,
    dual_attention_layers=(0, 1),
    qk_norm="rms_norm",
)
_FLUX = dict(
    patch_size=1,
    in_channels=8,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=_HEAD_DIM,
    num_attention_heads=_HEADS,
    joint_attention_dim=32,
    pooled_projection_dim=24,
    guidance_embeds=True,
    axes_dims_rope=(2, 2, 4),  # sums to attention_head_dim
)
_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32),
    layers_per_block=1,
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),  # SDXL convention: this is the number of heads per block
    cross_attention_dim=32,
    norm_num_groups=8,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24 + 6 * 8,  # text_embeds + 6 time ids * 8
)
_UNET_TEXT_EMBED_DIM = 24
_PIXART = dict(
    num_attention_heads=3,  # inner dim 24: the resolution/aspect-ratio embedders need a multiple of 3
    attention_head_dim=_HEAD_DIM,
    in_channels=4,
    out_channels=8,
    num_layers=2,
    norm_num_groups=8,
    cross_attention_dim=24,
    sample_size=8,
    patch_size=2,
    caption_channels=32,
    use_additional_conditions=True,
)


def _sd3() -> nn.Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**_SD3)


def _sd3_controlnet() -> nn.Module:
    from diffusers import SD3ControlNetModel

    cfg = {k: v for k, v in _SD3.items()}
    cfg.update(num_layers=2, dual_attention_layers=(0,))
    return SD3ControlNetModel(**cfg)


def _flux() -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**_FLUX)


def _flux_controlnet() -> nn.Module:
    from diffusers import FluxControlNetModel

    cfg = {k: v for k, v in _FLUX.items()}
    cfg.update(num_layers=1, num_single_layers=1)
    return FluxControlNetModel(**cfg)


def _unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_UNET)


def _controlnet() -> nn.Module:
    from diffusers import ControlNetModel

    cfg = {k: v for k, v in _UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    return ControlNetModel(**cfg, conditioning_embedding_out_channels=(4, 4, 4, 4))


def _pixart() -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(**_PIXART)


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "sd3": _sd3,
    "flux": _flux,
    "unet": _unet,
    "pixart": _pixart,
    "sd3_controlnet": _sd3_controlnet,
    "flux_controlnet": _flux_controlnet,
    "controlnet": _controlnet,
}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; allowed: {', '.join(TINY_MODELS)}")


@torch.no_grad()
def _refill_zero_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Give zero-initialised Linear/Conv weights (diffusers' ``zero_module``) small random values."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not module.weight.any():
            fan_in = module.weight[0].numel()
            noise = torch.randn(module.weight.shape, generator=gen) / fan_in**0.5
            module.weight.copy_(noise)


def build_tiny_denoiser(name: str, seed: int = 0) -> nn.Module:
    """Build the tiny diffusers model ``name`` (one of ``TINY_MODELS``), float32, eval mode, on CPU.

    The same ``(name, seed)`` always gives the same weights.
    """
    _check_name(name)
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG state untouched
        torch.manual_seed(seed)
        model = _BUILDERS[name]()
    _refill_zero_weights(model, torch.Generator().manual_seed(seed + 1))
    return model.float().eval()


def _example_sd3(g: Callable[..., Tensor], batch: int, control: bool) -> dict[str, Any]:
    s, c = _SD3["sample_size"], _SD3["in_channels"]
    out: dict[str, Any] = dict(
        hidden_states=g(batch, c, s, s),
        encoder_hidden_states=g(batch, 5, _SD3["joint_attention_dim"]),
        pooled_projections=g(batch, _SD3["pooled_projection_dim"]),
        timestep=torch.linspace(100.0, 900.0, batch),
    )
    if control:
        out["controlnet_cond"] = g(batch, c, s, s)
    return out


def _example_flux(g: Callable[..., Tensor], batch: int, control: bool) -> dict[str, Any]:
    h = w = 4
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    out: dict[str, Any] = dict(
        hidden_states=g(batch, h * w, _FLUX["in_channels"]),
        encoder_hidden_states=g(batch, 5, _FLUX["joint_attention_dim"]),
        pooled_projections=g(batch, _FLUX["pooled_projection_dim"]),
        timestep=torch.linspace(0.1, 0.9, batch),
        img_ids=img_ids.reshape(h * w, 3),
        txt_ids=torch.zeros(5, 3),
        guidance=torch.full((batch,), 3.5),
    )
    if control:
        out["controlnet_cond"] = g(batch, h * w, _FLUX["in_channels"])
    return out


def _example_unet(g: Callable[..., Tensor], batch: int, control: bool) -> dict[str, Any]:
    s = _UNET["sample_size"]
    out: dict[str, Any] = dict(
        sample=g(batch, _UNET["in_channels"], s, s),
        timestep=torch.tensor(500.0),
        encoder_hidden_states=g(batch, 5, _UNET["cross_attention_dim"]),
        added_cond_kwargs={
            "text_embeds": g(batch, _UNET_TEXT_EMBED_DIM),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1),
        },
    )
    if control:
        out["controlnet_cond"] = g(batch, 3, 8 * s, 8 * s)
    return out


def _example_pixart(g: Callable[..., Tensor], batch: int, control: bool) -> dict[str, Any]:
    s = _PIXART["sample_size"]
    return dict(
        hidden_states=g(batch, _PIXART["in_channels"], s, s),
        encoder_hidden_states=g(batch, 5, _PIXART["caption_channels"]),
        timestep=torch.linspace(100.0, 900.0, batch),
        added_cond_kwargs={
            "resolution": torch.tensor([[64.0, 64.0]]).repeat(batch, 1),
            "aspect_ratio": torch.ones(batch, 1),
        },
    )


def tiny_example_inputs(name: str, batch: int = 2, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``build_tiny_denoiser(name)(**kwargs)``, including ``return_dict=False``.

    Shapes (B = ``batch``), all float32:
      - sd3 / sd3_controlnet: hidden_states (B, 4, 8, 8), encoder_hidden_states (B, 5, 32),
        pooled_projections (B, 24), timestep (B,); controlnet_cond (B, 4, 8, 8).
      - flux / flux_controlnet: hidden_states (B, 16, 8) packed latents, encoder_hidden_states (B, 5, 32),
        pooled_projections (B, 24), timestep (B,) in [0, 1], img_ids (16, 3), txt_ids (5, 3),
        guidance (B,); controlnet_cond (B, 16, 8).
      - unet / controlnet: sample (B, 4, 8, 8), timestep (), encoder_hidden_states (B, 5, 32),
        added_cond_kwargs {text_embeds (B, 24), time_ids (B, 6)}; controlnet_cond (B, 3, 64, 64).
      - pixart: hidden_states (B, 4, 8, 8), encoder_hidden_states (B, 5, 32), timestep (B,),
        added_cond_kwargs {resolution (B, 2), aspect_ratio (B, 1)}.
    """
    _check_name(name)
    gen = torch.Generator().manual_seed(seed)

    def g(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    control = "controlnet" in name
    family = name.replace("_controlnet", "")
    makers = {"sd3": _example_sd3, "flux": _example_flux, "unet": _example_unet, "controlnet": _example_unet}
    makers["pixart"] = _example_pixart
    out = makers[family](g, batch, control)
    out["return_dict"] = False
    return out
