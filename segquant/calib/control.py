"""ControlNet pipelines: control-data prompt items, and quantizing the denoiser and/or the ControlNet.

Works with the stock diffusers ControlNet pipelines (``StableDiffusion3ControlNetPipeline`` +
``SD3ControlNetModel``, ``FluxControlNetPipeline`` + ``FluxControlNetModel``,
``StableDiffusionXLControlNetPipeline`` + ``ControlNetModel``) through their public call arguments::

    items = control_items(pipe, "control/coco-canny-512")             # prompt + control image per item
    quantize_components(pipe, items, {"transformer": "w8a8", "controlnet": "w8a8"},
                        UniformSampler(28, 32, 4), guidance_scale=7.0)
    images = generate(pipe, items, seed=0)                             # segquant.pipeline.generate

The ControlNet's recorded inputs include the control image (``controlnet_cond``: its VAE latent for
SD3 / FLUX, the preprocessed image for SDXL); the denoiser's include the ControlNet residuals. Every
component's calibration set is recorded from the full-precision pipeline before any is quantized.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from segquant.calib.generate import generate_calibrate_set
from segquant.calib.samplers import TimestepSampler
from segquant.data.control import ControlDataset
from segquant.errors import ConfigError
from segquant.pipeline.glue import find_denoisers

logger = logging.getLogger(__name__)

# The call argument that takes the control image, most specific first (SDXL ControlNet calls it ``image``).
CONTROL_ARGUMENTS: tuple[str, ...] = ("control_image", "image")


def control_argument(pipe: Any) -> str:
    """The name of ``pipe``'s control-image call argument; ``ConfigError`` for a pipeline without a ControlNet."""
    if not isinstance(getattr(pipe, "controlnet", None), nn.Module):
        raise ConfigError(f"{type(pipe).__name__} has no controlnet; control data needs a ControlNet pipeline")
    params = inspect.signature(pipe.__call__).parameters  # named ones (SDXL's also takes **kwargs)
    for name in CONTROL_ARGUMENTS:
        if name in params:
            return name
    raise ConfigError(f"{type(pipe).__name__}: no control-image argument ({', '.join(CONTROL_ARGUMENTS)}) "
                      "in its __call__")


def control_items(pipe: Any, data: Any, limit: int | None = None,
                  prompt_inputs: Callable[[str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One pipeline-call item per control triple: ``{"prompt": ..., <control argument>: control}``.

    Args:
        pipe: the ControlNet pipeline (decides the control argument's name).
        data: a control-data folder or a :class:`~segquant.data.control.ControlDataset`.
        limit: the first ``limit`` triples.
        prompt_inputs: maps a prompt to call arguments replacing ``"prompt"`` (e.g. precomputed
            embeddings for a pipeline without text encoders).
    Returns:
        Items whose control image is float32 ``(1, 3, S, S)`` in [0, 1] (the pipeline resizes it).
    """
    dataset = data if isinstance(data, ControlDataset) else ControlDataset(os.fspath(data))
    argument = control_argument(pipe)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    items = []
    for i in range(count):
        prompt = dataset.entries[i]["prompt"]
        item = dict(prompt_inputs(prompt)) if prompt_inputs else {"prompt": prompt}
        item[argument] = dataset.control(i)
        items.append(item)
    return items


def _configs(pipe: Any, components: Mapping[str, Any] | Sequence[str], config: Any) -> dict[str, Any]:
    named = dict(components) if isinstance(components, Mapping) else {name: config for name in components}
    known = find_denoisers(pipe)
    for name in named:
        if name not in known:
            raise ConfigError(f"{type(pipe).__name__} has no component {name!r}; its denoisers: {', '.join(known)}")
    if not named:
        raise ConfigError("components: name at least one of " + ", ".join(known))
    return named


def quantize_components(pipe: Any, items: Sequence[Any], components: Mapping[str, Any] | Sequence[str],
                        sampler: TimestepSampler, config: Any = None, batch_size: int = 1, seed: int = 0,
                        progress: bool = False, **pipeline_kwargs: Any) -> dict[str, nn.Module]:
    """Quantize several components of ``pipe`` (e.g. ``transformer`` and ``controlnet``) in place.

    Args:
        items: calibration prompt items (e.g. from :func:`control_items`).
        components: ``{name: config}``, or names that all use ``config`` (preset name, dict, YAML path).
        sampler: steps and trajectories to record (one calibration set per component, all recorded
            from the full-precision pipeline first).
        batch_size: calibration batch size.
        seed, progress, pipeline_kwargs: as in :func:`~segquant.calib.generate.generate_calibrate_set`.
    Returns:
        ``{name: quantized module}`` (the same objects as ``getattr(pipe, name)``).
    """
    from segquant.quantizer import quantize

    configs = _configs(pipe, components, config)
    sets = {name: generate_calibrate_set(pipe, sampler, items, name, seed=seed, progress=progress, **pipeline_kwargs)
            for name in configs}
    out = {}
    for name, cfg in configs.items():
        logger.info("quantizing %s on %d records", name, len(sets[name]))
        out[name] = quantize(getattr(pipe, name), sets[name].get_dataloader(batch_size=batch_size), cfg)
    return out
