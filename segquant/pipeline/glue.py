"""Glue between segquant and stock diffusers pipelines, through their public surfaces only.

- :func:`find_denoisers` / :func:`get_denoiser`: the pipeline's denoiser components
  (``transformer``, ``unet``, ``controlnet``, ...), found by attribute name, never by class lists.
- :func:`resolve_layer`: a module given as an object, a component name or a dotted path.
- :func:`swap_denoiser` / :func:`swapped_denoiser`: put a (quantized) denoiser into the pipeline.
- :func:`pipeline_call_kwargs`: turn one prompt item (a string or a dict of call arguments) into
  pipeline-call arguments.
- :func:`generate`: fixed-seed generation, one ``torch.Generator`` seeded ``seed + i`` per item, so an
  item's result does not depend on the others (the evaluation harness compares full precision and
  quantized images item by item).

Pipelines are duck-typed (anything with the denoiser as an attribute and ``__call__``);
``diffusers`` itself is never imported here.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from segquant.errors import ConfigError
from segquant.pipeline.seeding import seeded_global_rng

logger = logging.getLogger(__name__)

# Attribute names under which diffusers pipelines keep their denoisers, main ones first.
DENOISER_NAMES: tuple[str, ...] = ("transformer", "unet", "transformer_2", "unet_2", "prior", "decoder", "controlnet")


def find_denoisers(pipe: Any) -> dict[str, nn.Module]:
    """Denoiser components of ``pipe`` that are set, in ``DENOISER_NAMES`` order: name -> module."""
    found = {}
    for name in DENOISER_NAMES:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            found[name] = module
    return found


def get_denoiser(pipe: Any, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the denoiser ``name``, or of the main one (first of ``DENOISER_NAMES``).

    Raises ``ConfigError`` naming the pipeline class and the denoisers it has.
    """
    found = find_denoisers(pipe)
    if name is None:
        if not found:
            raise ConfigError(f"{type(pipe).__name__} has no denoiser component ({', '.join(DENOISER_NAMES)})")
        return next(iter(found.items()))
    module = getattr(pipe, name, None)
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"{type(pipe).__name__} has no module {name!r}; its denoisers: {', '.join(found) or 'none'}"
        )
    return name, module


def resolve_layer(pipe: Any, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``layer``: a module inside ``pipe``, a component name or a dotted path
    such as ``"transformer.transformer_blocks.0"``. Modules not found in ``pipe`` are named by class."""
    if isinstance(layer, nn.Module):
        for comp_name, comp in find_denoisers(pipe).items():
            for sub_name, sub in comp.named_modules():
                if sub is layer:
                    return (f"{comp_name}.{sub_name}" if sub_name else comp_name), layer
        return type(layer).__name__, layer
    if not isinstance(layer, str) or not layer:
        raise ConfigError(f"calib_layer: {layer!r} must be an nn.Module or a component name / dotted path")
    head, _, rest = layer.partition(".")
    _, module = get_denoiser(pipe, head)
    if rest:
        try:
            module = module.get_submodule(rest)
        except AttributeError:
            raise ConfigError(f"calib_layer: {layer!r}: {head} has no submodule {rest!r}") from None
    return layer, module


def swap_denoiser(pipe: Any, module: nn.Module, name: str | None = None) -> nn.Module:
    """Put ``module`` into ``pipe`` as denoiser ``name`` (default: the main one); return the old one.

    Uses plain attribute assignment, which diffusers pipelines record in their config. The new module
    keeps its own device and dtype. Pipelines read more than ``forward`` from their denoiser (e.g.
    ``config``, ``dtype``; FLUX calls ``transformer.cache_context``): a wrapper module must provide
    them; a diffusers model quantized in place has them.
    """
    name, old = get_denoiser(pipe, name)
    setattr(pipe, name, module)
    return old


@contextlib.contextmanager
def swapped_denoiser(pipe: Any, module: nn.Module, name: str | None = None) -> Iterator[Any]:
    """Context manager: ``pipe`` with ``module`` as denoiser ``name``; the original comes back on exit."""
    name, _ = get_denoiser(pipe, name)
    old = swap_denoiser(pipe, module, name)
    try:
        yield pipe
    finally:
        setattr(pipe, name, old)


def call_parameters(pipe: Any) -> set[str] | None:
    """Names accepted by ``pipe.__call__`` (``None`` when it takes ``**kwargs``, i.e. anything)."""
    params = inspect.signature(pipe.__call__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def pipeline_call_kwargs(item: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Pipeline-call arguments for one prompt item merged with ``extra`` (the shared call arguments).

    ``item`` is a prompt string or a dict of call arguments (e.g. ``prompt_embeds``, ``control_image``).
    A key given both by the item and by ``extra`` raises ``ConfigError``.
    """
    if isinstance(item, str):
        own: dict[str, Any] = {"prompt": item}
    elif isinstance(item, dict):
        own = dict(item)
    else:
        raise ConfigError(f"prompt item of type {type(item).__name__}: expected a str or a dict of pipeline arguments")
    clash = sorted(set(own) & set(extra))
    if clash:
        raise ConfigError(f"pipeline argument(s) {clash} given both per prompt and as shared keyword arguments")
    return {**extra, **own}


def iter_prompt_items(source: Iterable[Any]) -> Iterator[Any]:
    """Flatten a prompt source into single items: strings, dicts, or lists/tuples of strings (batches
    from a ``DataLoader`` over strings) become one item per string."""
    for entry in source:
        if isinstance(entry, (list, tuple)) and all(isinstance(e, str) for e in entry):
            yield from entry
        else:
            yield entry


def generate(
    pipe: Any,
    items: Iterable[Any],
    seed: int = 0,
    **call_kwargs: Any,
) -> list[Any]:
    """Run ``pipe`` once per item with ``generator = torch.Generator("cpu").manual_seed(seed + i)`` and
    torch's global RNG seeded ``seed + i`` (:func:`~segquant.pipeline.seeding.seeded_global_rng`).

    Args:
        items: prompt strings or dicts of call arguments (see ``pipeline_call_kwargs``).
        call_kwargs: shared pipeline arguments (``num_inference_steps``, ``guidance_scale``,
            ``output_type``, ...). ``generator`` may not be given (the seeds define the run).
    Returns:
        One entry per item: that call's ``output.images`` (a list of PIL images, or an array /
        tensor with a batch dimension, per ``output_type``; latents for ``output_type="latent"``).
    """
    if "generator" in call_kwargs:
        raise ConfigError("generate: pass seed=..., not generator= (one generator per item is made from the seed)")
    results = []
    for i, item in enumerate(iter_prompt_items(items)):
        kwargs = pipeline_call_kwargs(item, call_kwargs)
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed + i)
        with torch.no_grad(), seeded_global_rng(seed + i):  # also what the pipeline draws globally
            out = pipe(**kwargs)
        results.append(output_images(out))
    return results


def output_images(out: Any) -> Any:
    """A pipeline call's images (or latents, for ``output_type="latent"``): ``out.images``, or ``out[0]``
    for ``return_dict=False``."""
    return out.images if hasattr(out, "images") else out[0]
