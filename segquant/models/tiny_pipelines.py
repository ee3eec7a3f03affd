"""Tiny stock diffusers pipelines (SD3, FLUX, SDXL and their ControlNet variants) built on CPU.

Each pipeline is the *unmodified* diffusers pipeline class around the tiny denoisers of
:mod:`segquant.models.tiny`, a tiny ``AutoencoderKL`` (4 levels, so the VAE scale factor is 8 as in
the real models) and the model's usual scheduler. Text encoders and tokenizers are ``None``: prompts
are given as precomputed embeddings made by :func:`tiny_prompt_inputs`, which maps a prompt string
to deterministic pseudo-random embeddings (a hash of the text seeds the generator), so the same
prompt always gives the same embeddings and different prompts give different ones.

Sizes: images are ``TINY_IMAGE_SIZE`` = 64 px square, latents 8 x 8 (FLUX: packed (B, 16, 8)).
Nothing is downloaded; ``diffusers`` is imported inside the functions.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from segquant.models.tiny import _FLUX, _SD3, _UNET, _UNET_TEXT_EMBED_DIM, build_tiny_denoiser

TINY_PIPELINES: tuple[str, ...] = (
    "sd3",
    "flux",
    "sdxl",
    "sd3_controlnet",
    "flux_controlnet",
    "sdxl_controlnet",
)
TINY_IMAGE_SIZE = 64
_TEXT_LEN = 6  # sequence length of the fake text embeddings
# Which component records the main denoiser call, per tiny pipeline.
TINY_DENOISER = {name: ("unet" if name.startswith("sdxl") else "transformer") for name in TINY_PIPELINES}


def _check(name: str) -> None:
    if name not in TINY_PIPELINES:
        raise ValueError(f"unknown tiny pipeline {name!r}; allowed: {', '.join(TINY_PIPELINES)}")


def tiny_vae(latent_channels: int, seed: int = 0, sdxl: bool = False) -> torch.nn.Module:
    """A 4-level ``AutoencoderKL`` (scale factor 8) with ``latent_channels`` latent channels, float32."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    scaling = dict(scaling_factor=0.13025) if sdxl else dict(scaling_factor=1.5, shift_factor=0.1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE,
        **scaling,
    )
    return vae.float().eval()


def _flow_scheduler(flux: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if flux:
        return FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _sd3_pipeline(control: bool, seed: int):
    from diffusers import StableDiffusion3ControlNetPipeline, StableDiffusion3Pipeline

    parts: dict[str, Any] = dict(
        transformer=build_tiny_denoiser("sd3", seed),
        scheduler=_flow_scheduler(False),
        vae=tiny_vae(_SD3["in_channels"], seed),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        text_encoder_3=None, tokenizer_3=None,
    )
    if not control:
        return StableDiffusion3Pipeline(**parts)
    return StableDiffusion3ControlNetPipeline(**parts, controlnet=build_tiny_denoiser("sd3_controlnet", seed))


def _flux_pipeline(control: bool, seed: int):
    from diffusers import FluxControlNetPipeline, FluxPipeline

    parts: dict[str, Any] = dict(
        transformer=build_tiny_denoiser("flux", seed),
        scheduler=_flow_scheduler(True),
        vae=tiny_vae(_FLUX["in_channels"] // 4, seed),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
    )
    if not control:
        return FluxPipeline(**parts)
    return FluxControlNetPipeline(**parts, controlnet=build_tiny_denoiser("flux_controlnet", seed))


def _sdxl_pipeline(control: bool, seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    parts: dict[str, Any] = dict(
        vae=tiny_vae(_UNET["in_channels"], seed, sdxl=True),
        text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=build_tiny_denoiser("unet", seed),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
            steps_offset=1,
        ),
        add_watermarker=False,
    )
    if not control:
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionXLControlNetPipeline(**parts, controlnet=build_tiny_denoiser("controlnet", seed))


def build_tiny_pipeline(name: str, seed: int = 0):
    """Build the stock diffusers pipeline ``name`` (one of ``TINY_PIPELINES``) from tiny parts, on CPU.

    The same ``(name, seed)`` always gives the same weights. The progress bar is disabled.
    """
    _check(name)
    family, control = name.replace("_controlnet", ""), name.endswith("_controlnet")
    builder = {"sd3": _sd3_pipeline, "flux": _flux_pipeline, "sdxl": _sdxl_pipeline}[family]
    pipe = builder(control, seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _prompt_generator(prompt: str, salt: str) -> torch.Generator:
    digest = hashlib.sha256(f"{salt}\0{prompt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _embed(prompt: str, seq_dim: int, pooled_dim: int) -> tuple[Tensor, Tensor]:
    gen = _prompt_generator(prompt, "segquant-tiny-embed")
    return torch.randn(1, _TEXT_LEN, seq_dim, generator=gen), torch.randn(1, pooled_dim, generator=gen)


def _control_image(prompt: str) -> Tensor:
    """A deterministic (1, 3, 64, 64) float32 control image in [0, 1]."""
    gen = _prompt_generator(prompt, "segquant-tiny-control")
    return torch.rand(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=gen)


def tiny_prompt_inputs(name: str, prompt: str, negative_prompt: str = "") -> dict[str, Any]:
    """Pipeline-call arguments for ``prompt`` on the tiny pipeline ``name``: embeddings instead of text.

    Returns float32 ``prompt_embeds`` (1, 6, 32) and ``pooled_prompt_embeds`` (1, 24); SD3/SDXL also
    get ``negative_prompt_embeds`` / ``negative_pooled_prompt_embeds`` (the embeddings of
    ``negative_prompt``) so that classifier-free guidance needs no text encoder; ControlNet variants get
    a ``control_image`` (SDXL: ``image``) (1, 3, 64, 64) in [0, 1]; plus ``height`` = ``width`` = 64.
    """
    _check(name)
    family = name.replace("_controlnet", "")
    seq_dim = {"sd3": _SD3["joint_attention_dim"], "flux": _FLUX["joint_attention_dim"]}
    seq_dim["sdxl"] = _UNET["cross_attention_dim"]
    pooled_dim = {"sd3": _SD3["pooled_projection_dim"], "flux": _FLUX["pooled_projection_dim"]}
    pooled_dim["sdxl"] = _UNET_TEXT_EMBED_DIM
    emb, pooled = _embed(prompt, seq_dim[family], pooled_dim[family])
    out: dict[str, Any] = dict(prompt_embeds=emb, pooled_prompt_embeds=pooled)
    if family != "flux":
        neg, neg_pooled = _embed(negative_prompt, seq_dim[family], pooled_dim[family])
        out.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
    if name.endswith("_controlnet"):  # SDXL's ControlNet pipeline calls it ``image``
        out["image" if family == "sdxl" else "control_image"] = _control_image(prompt)
    out.update(height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE)
    return out
