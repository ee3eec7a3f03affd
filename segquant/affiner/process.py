"""``process_affiner``: fit a per-step correction of a quantized diffusion model against full precision.

Recurrent fitting (default) runs **one** denoising pass of the quantized pipeline over a batch of
prompts; a :class:`~segquant.pipeline.tap.DenoiserTap` on its denoiser calls the full-precision
denoiser on the very same inputs (``call.run``: no re-encoding, no device moves), adds the pair to
the step's statistics, refits that step and returns the corrected prediction, so the latents
advance along the corrected quantized trajectory — each step is fitted on the inputs it will see.
With several batches the statistics keep accumulating, so every step's final fit is pooled over all
prompts. ``recurrent=False`` runs the full-precision pipeline instead and calls the quantized
denoiser in lockstep (both models on the full-precision trajectory). TAC then fits its input bias
in two more passes (see :mod:`segquant.affiner.tac`).

**Held-out strength** (``validation_prompts=N``): the last ``N`` prompts (after shuffling) are not
fitted on. After fitting, the full-precision pipeline and the quantized pipeline with the correction
at each of ``strengths`` (0 = uncorrected) generate their final latents from the same noise; the
strength with the lowest mean ``log10`` MSE to full precision (the mean PSNR's criterion) is kept in
``correction.strength`` and the scores in ``correction.validation``. A correction that does not help
on prompts it never saw is thus switched off (strength 0) instead of applied. ``validation_z=z`` asks
more of it: a strength is a candidate only where its paired gain over the smallest strength, prompt by
prompt, exceeds ``z`` standard errors of its mean (a one-sided test; 0: any gain).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from segquant.errors import ConfigError
from segquant.pipeline.glue import (get_denoiser, iter_prompt_items, output_images, pipeline_call_kwargs,
                                    swapped_denoiser)
from segquant.pipeline.seeding import seeded_global_rng
from segquant.pipeline.steps import first_tensor
from segquant.pipeline.tap import DenoiserTap, TapCall, output_sample, tapping

logger = logging.getLogger(__name__)
METHODS = ("affiner", "ptqd", "tac")


@dataclass
class AffinerConfig:
    """Settings of :func:`process_affiner` (a dict with these keys is accepted; unknown keys raise).

    ``method``: "affiner", "ptqd" or "tac"; ``blocksize``, ``alpha``, ``lambda1``, ``lambda2``: the
    affiner's (see :mod:`segquant.affiner.blockwise`); ``noise_target``, ``enable_timesteps``,
    ``packed_grid``: every method's; ``recurrent``: fit along the corrected quantized trajectory;
    ``validation_prompts``: prompts held out to choose the strength among ``strengths`` (0: no hold-out,
    strength 1), ``validation_z``: standard errors by which a strength's held-out gain must exceed 0;
    ``batch_size``: prompts per pipeline call; ``num_inference_steps``, ``guidance_scale``
    (``None``: the pipeline's default), ``seed`` (prompt ``i`` of the pass uses seed ``seed + i``) and
    ``pipeline_kwargs`` of the fitting runs.
    """

    method: str = "affiner"
    blocksize: int = 1
    alpha: float = 0.5
    lambda1: float = 0.0
    lambda2: float = 0.0
    noise_target: str = "all"
    enable_timesteps: list[int] | None = None
    packed_grid: tuple[int, int] | None = None
    recurrent: bool = True
    validation_prompts: int = 0
    validation_z: float = 0.0
    strengths: tuple[float, ...] = (0.0, 0.5, 1.0)
    batch_size: int = 8
    num_inference_steps: int = 10
    guidance_scale: float | None = None
    seed: int = 0
    pipeline_kwargs: dict = field(default_factory=dict)


def as_affiner_config(config: AffinerConfig | dict | None) -> AffinerConfig:
    """``config`` as an :class:`AffinerConfig`; raises ``ConfigError`` naming an unknown key or method."""
    if isinstance(config, AffinerConfig):
        cfg = config
    else:
        known = {f.name for f in dataclasses.fields(AffinerConfig)}
        unknown = sorted(set(config or {}) - known)
        if unknown:
            raise ConfigError(f"affiner config: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = AffinerConfig(**(config or {}))
    if cfg.method not in METHODS:
        raise ConfigError(f"affiner config: method {cfg.method!r}; expected one of {', '.join(METHODS)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"affiner config: batch_size={cfg.batch_size} must be ≥ 1")
    if cfg.validation_prompts < 0 or not cfg.strengths or min(cfg.strengths) < 0 or cfg.validation_z < 0:
        raise ConfigError(f"affiner config: validation_prompts={cfg.validation_prompts} and validation_z="
                          f"{cfg.validation_z} must be ≥ 0 and strengths={cfg.strengths} a non-empty list of "
                          "fractions ≥ 0")
    if cfg.validation_z > 0 and cfg.validation_prompts < 2:
        raise ConfigError(f"affiner config: validation_z={cfg.validation_z} needs validation_prompts ≥ 2 (a standard "
                          f"error needs two held-out prompts); got {cfg.validation_prompts}")
    return cfg


def build_corrector(cfg: AffinerConfig):
    """An unfitted correction of ``cfg.method``."""
    from segquant.affiner.io import _kinds

    common = {"noise_target": cfg.noise_target, "enable_timesteps": cfg.enable_timesteps,
              "packed_grid": cfg.packed_grid}
    if cfg.method == "affiner":
        common.update(blocksize=cfg.blocksize, alpha=cfg.alpha, lambda1=cfg.lambda1, lambda2=cfg.lambda2)
    return _kinds()[cfg.method](**common)


def merge_items(items: list[Any]) -> dict[str, Any]:
    """One batched pipeline call from prompt items: strings -> ``prompt`` list; dicts -> tensors
    concatenated on dim 0, other values shared (must be equal)."""
    kwargs = [pipeline_call_kwargs(item, {}) for item in items]
    out: dict[str, Any] = {}
    for key in kwargs[0]:
        values = [k.get(key) for k in kwargs]
        if all(isinstance(v, Tensor) for v in values):
            out[key] = torch.cat(values)
        elif all(isinstance(v, str) for v in values) and key in ("prompt", "negative_prompt"):
            out[key] = values
        elif all(v == values[0] for v in values):
            out[key] = values[0]
        else:
            raise ConfigError(f"process_affiner: prompt items differ in {key!r}; they cannot share a batch")
    return out


def _runs(model_real: Any, model_quant: Any):
    """``(fp_pipe, fp_denoiser, q_pipe, q_denoiser, q_context)``: the quantized model is a pipeline or a
    quantized copy of ``model_real``'s denoiser (swapped in by ``q_context()`` while it runs)."""
    name, fp = get_denoiser(model_real)
    if isinstance(model_quant, nn.Module):
        return model_real, fp, model_real, model_quant, lambda: swapped_denoiser(model_real, model_quant, name)
    return model_real, fp, model_quant, get_denoiser(model_quant)[1], contextlib.nullcontext


def _passes(pipe, tap: DenoiserTap | None, items: list, cfg: AffinerConfig, latents: Tensor | None,
            seed: int | None = None) -> list[Tensor]:
    """Run ``pipe`` over ``items`` in batches, with ``tap`` installed when given; item ``i`` draws its noise
    from ``seed + i`` (default ``cfg.seed``). Returns the final latents of each batch (no decoding)."""
    seed = cfg.seed if seed is None else seed
    extra = dict(cfg.pipeline_kwargs, num_inference_steps=cfg.num_inference_steps, output_type="latent")
    if cfg.guidance_scale is not None:
        extra["guidance_scale"] = cfg.guidance_scale
    finals = []
    for start in range(0, len(items), cfg.batch_size):
        batch = items[start: start + cfg.batch_size]
        kwargs = {**extra, **merge_items(batch)}
        kwargs["generator"] = [torch.Generator("cpu").manual_seed(seed + start + j) for j in range(len(batch))]
        if latents is not None:
            kwargs["latents"] = latents[start: start + len(batch)]
        with tapping(tap, range(start, start + len(batch))), torch.no_grad(), seeded_global_rng(seed + start):
            finals.append(output_images(pipe(**kwargs)))
    return finals


def _lockstep(corr, other: nn.Module, recurrent: bool):
    """The tap handler: the other model on the same inputs, fit, and (recurrent) the corrected output."""

    def after(call: TapCall) -> Any:
        other_sample = output_sample(call.run(other))
        q, fp = (call.sample, other_sample) if recurrent else (other_sample, call.sample)
        corr.fit(q, fp, call.info, call.inputs)
        return call.with_sample(corr.apply(q, call.info)) if recurrent else None

    return after


def process_affiner(config: AffinerConfig | dict | None, dataset: Iterable[Any], model_real: Any, model_quant: Any,
                    latents: Tensor | None = None, shuffle: bool = True, thirdparty_affiner: Any = None):
    """Fit a per-step correction of ``model_quant`` toward ``model_real`` (see the module docstring).

    Args:
        config: :class:`AffinerConfig` or a dict of its fields.
        dataset: prompt items (strings, or dicts of pipeline arguments, e.g. embeddings and a ControlNet's
            control image); lists of strings (DataLoader batches) are flattened.
        model_real: the full-precision pipeline.
        model_quant: the quantized pipeline, or a quantized copy of ``model_real``'s denoiser.
        latents: optional start noise ``(N, ...)``, one per dataset item (in dataset order).
        shuffle: visit the items in a random order (``seed``); ``latents`` follow their items.
        thirdparty_affiner: an object with the fit/apply protocol (:mod:`segquant.affiner.base`) to fit
            instead of ``config.method``'s correction (with ``validation_prompts``, it needs a ``strength``
            attribute that its ``apply`` honours).
    Returns:
        The fitted correction: a stepper (``install_stepper(pipe, it)``; TAC: ``it.install(pipe)``).
    """
    cfg = as_affiner_config(config)
    items = list(iter_prompt_items(dataset))
    if not items:
        raise ConfigError("process_affiner: the dataset holds no prompt")
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed)) if shuffle else None
    if order is not None:
        items = [items[int(i)] for i in order]
        latents = None if latents is None else latents[order]
    corr = thirdparty_affiner if thirdparty_affiner is not None else build_corrector(cfg)
    held_out = _held_out(cfg, corr, len(items))
    fit_items, val_items = items[: len(items) - held_out], items[len(items) - held_out:]
    fit_latents, val_latents = (None, None) if latents is None else latents.split([len(fit_items), held_out])
    fp_pipe, fp, q_pipe, q, q_context = _runs(model_real, model_quant)
    run_pipe, other, context = (q_pipe, fp, q_context) if cfg.recurrent else (fp_pipe, q, contextlib.nullcontext)
    with context():
        _passes(run_pipe, DenoiserTap(run_pipe, after=_lockstep(corr, other, cfg.recurrent)), fit_items, cfg,
                fit_latents)
    if callable(getattr(corr, "finish", None)):
        corr.finish(len(run_pipe.scheduler.timesteps))
    if hasattr(corr, "input_bias") and thirdparty_affiner is None:
        fit_input_bias(corr, fp_pipe, q_pipe, q_context, fit_items, cfg, fit_latents)
    if val_items:
        choose_strength(corr, fp_pipe, q_pipe, q_context, val_items, cfg, val_latents, seed=cfg.seed + len(fit_items))
    return corr


def _held_out(cfg: AffinerConfig, corr: Any, num_items: int) -> int:
    """How many prompts ``cfg.validation_prompts`` holds out of ``num_items``; raises ``ConfigError`` when
    none would be left to fit on, or when ``corr`` has no ``strength`` to choose."""
    held_out = cfg.validation_prompts
    if held_out and held_out >= num_items:
        raise ConfigError(f"process_affiner: validation_prompts={held_out} leaves none of the {num_items} prompts "
                          "to fit on")
    if held_out and not hasattr(corr, "strength"):
        raise ConfigError("process_affiner: validation_prompts needs a correction with a `strength` attribute "
                          f"that its apply honours; {type(corr).__name__} has none")
    return held_out


def choose_strength(corr, fp_pipe, q_pipe, q_context, items, cfg: AffinerConfig, latents, seed: int) -> None:
    """Set ``corr.strength`` to the one of ``cfg.strengths`` whose corrected quantized run ends closest to
    the full-precision run on the held-out ``items`` (lowest mean over prompts of ``log10`` MSE of the
    final latents, same noise), among those whose gain over the smallest strength passes
    :func:`significant_gain` at ``cfg.validation_z``; ties go to the smaller strength.
    ``corr.validation``: strength -> mean score."""
    from segquant.affiner.hooks import installed

    reference = torch.cat(_passes(fp_pipe, None, items, cfg, latents, seed)).float()
    per_prompt = {}
    with q_context():
        for strength in sorted(set(float(s) for s in cfg.strengths)):
            corr.strength = strength
            with installed(q_pipe, corr if strength else None):
                final = torch.cat(_passes(q_pipe, None, items, cfg, latents, seed)).float()
            per_prompt[strength] = (final - reference).pow(2).flatten(1).mean(1).clamp_min(1e-30).log10().double()
    base = min(per_prompt)
    scores = {s: float(v.mean()) for s, v in per_prompt.items()}
    candidates = [s for s in per_prompt if s == base or significant_gain(per_prompt[base] - per_prompt[s],
                                                                          cfg.validation_z)]
    corr.strength = min(candidates, key=lambda s: (scores[s], s))
    corr.validation = scores
    logger.info("%s: strength %g chosen on %d held-out prompts (mean log10 MSE %s; z = %g)",
                getattr(corr, "kind", "correction"), corr.strength, len(items),
                ", ".join(f"{s:g}: {v:.4f}" for s, v in scores.items()), cfg.validation_z)


def significant_gain(gains: Tensor, z: float) -> bool:
    """Whether the paired per-prompt ``gains`` ``(P,)`` (positive: better) have a mean above ``z`` standard errors
    of it (one-sided; ``z`` 0: a positive mean, the only test one prompt allows)."""
    mean = float(gains.mean())
    error = float(gains.std() / len(gains) ** 0.5) if len(gains) > 1 else 0.0
    return mean > z * error


def _input_means(pipe, items, cfg: AffinerConfig, latents, correction=None) -> dict[int, Tensor]:
    """Per step, the channel mean ``(C,)`` (float64) of the denoiser's main input over every call."""
    from segquant.affiner.hooks import installed

    sums: dict[int, list] = {}

    def before(call: TapCall) -> None:
        x = first_tensor(call.inputs).detach().double()
        dims = (0, 2, 3) if x.ndim == 4 else (0, 1)
        entry = sums.setdefault(call.info.step_index, [0.0, 0])
        entry[0] = entry[0] + x.sum(dims).cpu()
        entry[1] += x.numel() // x.shape[1 if x.ndim == 4 else -1]

    with installed(pipe, correction):
        _passes(pipe, DenoiserTap(pipe, before=before), items, cfg, latents)
    return {s: total / count for s, (total, count) in sums.items()}


def fit_input_bias(corr, fp_pipe, q_pipe, q_context, items, cfg: AffinerConfig, latents) -> None:
    """TAC's input bias: per step, channel mean of the quantized run's input (with the fitted NER
    applied) minus the full-precision run's, same prompts and noise; stored in ``corr.input_bias``."""
    fp_means = _input_means(fp_pipe, items, cfg, latents)
    with q_context():
        q_means = _input_means(q_pipe, items, cfg, latents, correction=corr)
    corr.input_bias = {s: (q_means[s] - fp_means[s]).float() for s in fp_means
                       if s in q_means and corr.enabled(s)}
