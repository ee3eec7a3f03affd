"""Demo ControlNets: Canny edges of Fashion-MNIST as the condition of the demo denoisers.

Each ControlNet is the stock diffusers class of its family, made from the trained demo denoiser with
the class's own ``from_transformer`` / ``from_unet`` (weights copied, zero-initialised control input):

- ``mmdit``: ``SD3ControlNetModel`` (2 joint blocks, copies of the denoiser's first two), control = the
  edge map in pixel space ``(B, 1, 32, 32)`` in [-1, 1] (no VAE in the demo: the "latent" is the image);
- ``flux``: ``FluxControlNetModel`` (1 joint + 2 single blocks), control packed like the image ``(B, 256, 4)``;
- ``unet``: ``ControlNetModel`` with a 1-channel, stride-1 conditioning embedding (pixel space).

:class:`SegQuantDemoControlNetPipeline` runs the ControlNet on every denoiser call and hands its
residuals to the denoiser as the stock pipelines do (``block_controlnet_hidden_states``,
``controlnet_block_samples`` / ``controlnet_single_block_samples``, ``down_block_additional_residuals``
/ ``mid_block_additional_residual``). ``control_image``: float ``(B, C, 32, 32)`` in [0, 1], white edges.

Evaluation controls (``segquant eval mmdit --controlnet``): :func:`demo_controls` gives each class
prompt the Canny edges of a Fashion-MNIST *test* image of its class, from the shipped
``weights/fashion_canny_test.npz`` (20 per class, :func:`write_control_set`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from segquant.demo.models import denoiser_kwargs, kind_of, pack
from segquant.demo.pipeline import WEIGHTS_DIR, SegQuantDemoPipeline, load_demo_pipeline

CONTROLNET_FOLDER = "controlnet"
CONTROL_SET = WEIGHTS_DIR / "fashion_canny_test.npz"  # evaluation controls (see write_control_set)


def build_controlnet(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A fresh ControlNet of the denoiser's family, initialised from ``denoiser`` (see the module docstring)."""
    import diffusers

    kind = kind_of(denoiser)
    if kind == "mmdit":  # copies the first blocks; the denoiser's last block (context_pre_only) has another shape
        layers = max(1, min(2, denoiser.config.num_layers - 1))
        return diffusers.SD3ControlNetModel.from_transformer(denoiser, num_layers=layers,
                                                             num_extra_conditioning_channels=0)
    if kind == "flux":
        cfg = denoiser.config
        return diffusers.FluxControlNetModel.from_transformer(
            denoiser, num_layers=1, num_single_layers=2, attention_head_dim=cfg.attention_head_dim,
            num_attention_heads=cfg.num_attention_heads)
    return diffusers.ControlNetModel.from_unet(denoiser, conditioning_embedding_out_channels=(16,),
                                               conditioning_channels=1)


def control_to_model(control: torch.Tensor, kind: str) -> torch.Tensor:
    """Control image float ``(B, C, H, W)`` in [0, 1] -> the ControlNet's ``controlnet_cond``: grey in
    [-1, 1] ``(B, 1, H, W)``, packed ``(B, H/2·W/2, 4)`` for FLUX."""
    grey = control.float().mean(1, keepdim=True) * 2 - 1
    return pack(grey) if kind == "flux" else grey


def controlnet_residuals(controlnet: torch.nn.Module, kind: str, x: torch.Tensor, t: torch.Tensor,
                         states: torch.Tensor, pooled: torch.Tensor, cond: torch.Tensor, scale: float = 1.0) -> dict:
    """Run ``controlnet`` on the denoiser inputs (as in ``denoiser_kwargs``) with ``cond`` (from
    :func:`control_to_model`); returns the extra keyword arguments of the denoiser call."""
    kwargs = denoiser_kwargs(kind, x, t, states, pooled)
    out = controlnet(**kwargs, controlnet_cond=cond.to(x.dtype), conditioning_scale=scale)
    if kind == "mmdit":
        return {"block_controlnet_hidden_states": out[0]}
    if kind == "flux":
        return {"controlnet_block_samples": out[0], "controlnet_single_block_samples": out[1]}
    return {"down_block_additional_residuals": out[0], "mid_block_additional_residual": out[1]}


class SegQuantDemoControlNetPipeline(SegQuantDemoPipeline):
    """The demo pipeline with a ControlNet: ``pipe(prompt, control_image=edges, ...)`` (see the module docstring)."""

    _optional_components = [*SegQuantDemoPipeline._optional_components, "controlnet"]

    def __init__(self, scheduler, controlnet, tokenizer=None, text_encoder=None, transformer=None, unet=None):
        super().__init__(scheduler, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, unet=unet)
        self.register_modules(controlnet=controlnet)
        self._control: tuple[torch.Tensor, float] | None = None

    def __call__(self, prompt=None, control_image: torch.Tensor | None = None,
                 controlnet_conditioning_scale: float = 1.0, **kwargs):
        """Generate with ``control_image`` float ``(B, C, 32, 32)`` in [0, 1] (one per image, or one for all);
        other arguments as :meth:`SegQuantDemoPipeline.__call__`."""
        if control_image is None:
            raise ValueError("SegQuantDemoControlNetPipeline needs control_image=")
        self._control = (torch.as_tensor(control_image), float(controlnet_conditioning_scale))
        try:
            return super().__call__(prompt, **kwargs)
        finally:
            self._control = None

    def _predict(self, model, kind, latent_in, timestep, states, pooled) -> torch.Tensor:
        control, scale = self._control
        cond = control_to_model(control.to(latent_in.device), kind)
        cond = cond.expand(latent_in.shape[0] // 2, *cond.shape[1:]) if cond.shape[0] == 1 else cond
        cond = torch.cat([cond, cond]) if self.do_classifier_free_guidance else cond
        extra = controlnet_residuals(self.controlnet, kind, latent_in, timestep, states, pooled, cond, scale)
        return super()._predict(model, kind, latent_in, timestep, states, pooled, **extra)


def fashion_controls(images: np.ndarray) -> torch.Tensor:
    """Canny edges (100 / 200, :mod:`segquant.data.canny`) of Fashion-MNIST uint8 ``(N, 28, 28)``, padded to
    32 x 32 like the training images: float ``(N, 1, 32, 32)`` in {0, 1}."""
    from segquant.data.canny import canny_edges

    padded = np.pad(np.asarray(images, np.uint8), ((0, 0), (2, 2), (2, 2)))
    edges = np.stack([canny_edges(img) for img in padded])
    return torch.from_numpy(edges).float().div_(255.0).unsqueeze(1)


def load_demo_controlnet_pipeline(name: str = "mmdit", weights_dir: str | Path | None = None,
                                  device: str = "cpu") -> SegQuantDemoControlNetPipeline:
    """The demo pipeline ``name`` with its shipped ControlNet (``weights/<name>/controlnet/``), float32."""
    from segquant.models.loading import load_model_folder

    folder = Path(weights_dir or WEIGHTS_DIR) / name / CONTROLNET_FOLDER
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"demo model {name!r}: no ControlNet in {folder} (train one with "
                                "`python -m segquant.demo.train_controlnet`)")
    base = load_demo_pipeline(name, weights_dir)
    pipe = SegQuantDemoControlNetPipeline(base.scheduler, load_model_folder(folder, torch.float32), base.tokenizer,
                                          base.text_encoder, transformer=base.transformer, unet=base.unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def write_control_set(path: str | Path = CONTROL_SET, per_class: int = 20, data_dir=None) -> Path:
    """Save the Canny edges of the first ``per_class`` Fashion-MNIST *test* images of each class (the
    evaluation controls; the ControlNets were trained on the train split) as bit-packed uint8
    ``edges`` ``(10, per_class, 32, 32)``."""
    from segquant.demo.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test", data_dir)
    picked = np.stack([images[np.flatnonzero(labels == c)[:per_class]] for c in range(10)])
    edges = fashion_controls(picked.reshape(-1, 28, 28)).numpy().astype(bool).reshape(10, per_class, 32, 32)
    np.savez_compressed(path, edges=np.packbits(edges, axis=-1), per_class=per_class)
    return Path(path)


def load_control_set(path: str | Path = CONTROL_SET) -> torch.Tensor:
    """The shipped evaluation controls: float ``(10, K, 1, 32, 32)`` in {0, 1} (class, index, image)."""
    with np.load(path) as d:
        edges = np.unpackbits(d["edges"], axis=-1)
    return torch.from_numpy(edges).float().unsqueeze(2)


def demo_control_kwargs(labels: list[int], calib_prompts: list[str]) -> dict:
    """``EvalConfig`` keyword arguments of a demo ControlNet run: ``controls`` for the evaluation prompts of
    classes ``labels`` (test images 0, 1, ...) and ``calib_controls`` for the calibration prompts (classes
    read from the caption list; test images from 10 on, so calibration and evaluation controls differ)."""
    from segquant.demo.data import all_captions

    label_of = dict(zip(*all_captions()))
    calib_labels = [int(label_of[p]) for p in calib_prompts]
    return {"controls": demo_controls(labels), "calib_controls": demo_controls(calib_labels, offset=10)}


def demo_controls(labels: list[int], offset: int = 0, path: str | Path = CONTROL_SET) -> torch.Tensor:
    """Control images for prompts of classes ``labels``: the j-th prompt of class c gets test image
    ``offset + j`` (mod K) of that class. Float ``(N, 3, 32, 32)`` in {0, 1}."""
    table = load_control_set(path)
    seen: dict[int, int] = {}
    out = []
    for c in labels:
        j = seen.get(c, 0)
        seen[c] = j + 1
        out.append(table[c, (offset + j) % table.shape[1]])
    return torch.stack(out).expand(-1, 3, -1, -1).contiguous()
