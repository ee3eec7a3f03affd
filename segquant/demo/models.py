"""The three demo denoisers (stock diffusers classes at small size) and how each is called.

All three work in pixel space on 1×32×32 images in [-1, 1], are conditioned on all-MiniLM-L6-v2
token states ``(B, L, 384)`` and the pooled embedding ``(B, 384)``, and predict the rectified-flow
velocity ``v = noise - x0``:

- ``mmdit``: ``SD3Transformer2DModel``, SD3.5-like (dual attention in the first layers, RMS qk-norm).
- ``flux``: ``FluxTransformer2DModel`` with joint and single blocks; the image is packed into 2×2
  patches (256 tokens × 4 channels) as the FLUX pipeline packs latents.
- ``unet``: ``UNet2DConditionModel``, SDXL-like (cross-attention, ``addition_embed_type="text_time"``).

``denoiser_kwargs`` builds the keyword arguments of the stock diffusers pipelines for each class, so
calibration recorders see the same arguments they would see in SD3 / FLUX / SDXL pipelines.
"""

from __future__ import annotations

import torch

from segquant.demo.text_encoder import EMBED_DIM

IMAGE_SIZE = 32
CHANNELS = 1
MODEL_NAMES = ("mmdit", "flux", "unet")

CONFIGS = {
    "mmdit": dict(
        sample_size=IMAGE_SIZE, patch_size=2, in_channels=CHANNELS, out_channels=CHANNELS, num_layers=4,
        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=EMBED_DIM,
        caption_projection_dim=128, pooled_projection_dim=EMBED_DIM, pos_embed_max_size=16,
        dual_attention_layers=(0, 1), qk_norm="rms_norm",
    ),
    "flux": dict(
        patch_size=1, in_channels=4 * CHANNELS, out_channels=None, num_layers=2, num_single_layers=4,
        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=EMBED_DIM,
        pooled_projection_dim=EMBED_DIM, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    ),
    "unet": dict(
        sample_size=IMAGE_SIZE, in_channels=CHANNELS, out_channels=CHANNELS, layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1), attention_head_dim=(1, 2, 4), cross_attention_dim=EMBED_DIM,
        norm_num_groups=32, addition_embed_type="text_time", addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=EMBED_DIM + 6 * 32, use_linear_projection=True,
    ),
}

CLASS_OF = {"mmdit": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel", "unet": "UNet2DConditionModel"}


def build_denoiser(name: str, config: dict | None = None) -> torch.nn.Module:
    """A freshly initialised denoiser ``name`` (one of ``MODEL_NAMES``), config overrides merged in."""
    import diffusers

    if name not in CONFIGS:
        raise ValueError(f"model: {name!r} is not one of {MODEL_NAMES}")
    cls = getattr(diffusers, CLASS_OF[name])
    return cls(**{**CONFIGS[name], **(config or {})})


def kind_of(model: torch.nn.Module) -> str:
    """``"mmdit"``, ``"flux"`` or ``"unet"`` from the denoiser's class name."""
    for kind, cls_name in CLASS_OF.items():
        if type(model).__name__ == cls_name:
            return kind
    raise TypeError(f"{type(model).__name__} is not a demo denoiser class ({sorted(CLASS_OF.values())})")


def pack(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2·W/2, 4C)``: 2×2 patches as FLUX packs latents."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int = IMAGE_SIZE, w: int = IMAGE_SIZE) -> torch.Tensor:
    """Inverse of ``pack``: ``(B, H/2·W/2, 4C)`` -> ``(B, C, H, W)``."""
    b, _, c4 = x.shape
    c = c4 // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def flux_ids(seq_len: int, h: int = IMAGE_SIZE, w: int = IMAGE_SIZE, device=None, dtype=torch.float32):
    """FLUX position ids: ``img_ids`` ``(H/2·W/2, 3)`` = (0, row, col) and ``txt_ids`` ``(seq_len, 3)`` zeros."""
    rows = torch.arange(h // 2, device=device, dtype=dtype)
    cols = torch.arange(w // 2, device=device, dtype=dtype)
    img = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    img[..., 1] = rows[:, None]
    img[..., 2] = cols[None, :]
    return img.reshape(-1, 3), torch.zeros(seq_len, 3, device=device, dtype=dtype)


def denoiser_kwargs(kind: str, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
                    pooled: torch.Tensor) -> dict:
    """Forward kwargs of the denoiser, as the stock diffusers pipeline of its family passes them.

    ``x``: ``(B, 1, 32, 32)`` noisy image; ``t``: ``(B,)`` scheduler timesteps in [0, 1000];
    ``states``: ``(B, L, 384)``; ``pooled``: ``(B, 384)``. FLUX gets packed tokens and ``t / 1000``,
    the UNet gets ``added_cond_kwargs`` with SDXL-style ``time_ids`` (original size, crop, target size).
    """
    if kind == "mmdit":
        return dict(hidden_states=x, timestep=t, encoder_hidden_states=states, pooled_projections=pooled,
                    return_dict=False)
    if kind == "flux":
        img_ids, txt_ids = flux_ids(states.shape[1], x.shape[-2], x.shape[-1], device=x.device, dtype=x.dtype)
        return dict(hidden_states=pack(x), timestep=t / 1000, encoder_hidden_states=states,
                    pooled_projections=pooled, img_ids=img_ids, txt_ids=txt_ids, guidance=None, return_dict=False)
    if kind == "unet":
        size = float(x.shape[-1])
        time_ids = torch.tensor([size, size, 0.0, 0.0, size, size], device=x.device, dtype=x.dtype)
        return dict(sample=x, timestep=t, encoder_hidden_states=states, return_dict=False,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(x.shape[0], 6)})
    raise ValueError(f"kind: {kind!r} is not one of {MODEL_NAMES}")


def output_to_image(kind: str, out, h: int = IMAGE_SIZE, w: int = IMAGE_SIZE) -> torch.Tensor:
    """The denoiser's raw output (tuple or tensor) as ``(B, 1, H, W)`` velocity."""
    out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
    return unpack(out, h, w) if kind == "flux" else out


def predict(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor,
            pooled: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """Velocity ``(B, 1, H, W)`` predicted by ``model`` for noisy images ``x`` at timesteps ``t``."""
    kind = kind or kind_of(model)
    return output_to_image(kind, model(**denoiser_kwargs(kind, x, t, states, pooled)), x.shape[-2], x.shape[-1])


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
