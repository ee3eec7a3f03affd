"""What the evaluation harness needs to run a baseline like a preset: its calibration data (recorded once
per timestep sampler), its quantizer, whether it applies to the model, and the granularity of its scales."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from torch import nn

from segquant.baselines.registry import BASELINES, Baseline


def as_baseline(config: Any) -> Baseline | None:
    """The :class:`Baseline` a harness entry names (a registered name or a Baseline), else ``None``."""
    if isinstance(config, Baseline):
        return config
    return BASELINES.get(config) if isinstance(config, str) else None


def quantize_entry(model: nn.Module, loader: Any, config: Any) -> nn.Module:
    """Quantize ``model`` with a baseline, or with ``segquant.quantize`` for a preset / config."""
    baseline = as_baseline(config)
    if baseline is not None:
        return baseline.quantize(model, loader)
    from segquant import quantize

    return quantize(model, loader, config=config)


def not_applicable(config: Any, model: nn.Module) -> str | None:
    """Why the entry cannot run on ``model`` (baselines only), or ``None``."""
    baseline = as_baseline(config)
    return baseline.not_applicable(model) if baseline is not None else None


def granularity(config: Any) -> str:
    """The scales of an entry's weights and inputs in words (baselines: their table entry; presets and
    configs: read from the default layer config)."""
    baseline = as_baseline(config)
    if baseline is not None:
        return f"{baseline.bits}: {baseline.granularity}"
    from segquant.config import as_quant_config
    from segquant.errors import ConfigError

    try:
        layer = as_quant_config(config).for_layer("")
    except ConfigError:  # the row reports the error when the entry runs
        return "—"
    w, a = layer.weight_quant, layer.input_quant
    weights = f"W {w.dtype.value} per-{w.granularity.name}" if w.enable else "W fp"
    inputs = (f"A {a.dtype.value} {'dynamic' if a.dynamic else 'static'} per-{a.granularity.name}"
              if a.enable else "A fp")
    group = f"({w.granularity.group_size})" if hasattr(w.granularity, "group_size") else ""
    return f"{weights}{group}, {inputs}"


class CalibrationLoaders:
    """The calibration loader of each timestep sampler, recorded on first use with ``record(sampler)``
    (``"uniform"`` is given: the presets' loader); ``get(config) -> (loader, seconds to record it)``."""

    def __init__(self, uniform: Any, uniform_s: float, record: Callable[[str], Any]):
        self._loaders = {"uniform": (uniform, uniform_s)}
        self._record = record

    def get(self, config: Any) -> tuple[Any, float]:
        baseline = as_baseline(config)
        kind = baseline.sampler if baseline is not None else "uniform"
        if kind not in self._loaders:
            t0 = time.perf_counter()
            loader = self._record(kind)
            self._loaders[kind] = (loader, time.perf_counter() - t0)
        return self._loaders[kind]


def sampler_for(kind: str, num_steps: int, prompts: list[str], recorded: int) -> tuple[Any, list[str]]:
    """``(sampler, prompts)`` of a calibration set: ``"uniform"``: ``recorded`` evenly spaced steps of each
    prompt's trajectory; ``"normal"`` (PTQ4DM): twice the trajectories (each prompt twice, other noise),
    ``ceil(recorded / 2)`` steps each drawn from the normal distribution over the step index."""
    from segquant.calib import NormalSampler, UniformSampler

    if kind == "uniform":
        return UniformSampler(num_steps, len(prompts), recorded), prompts
    if kind == "normal":
        doubled = prompts + prompts
        return NormalSampler(num_steps, len(doubled), math.ceil(recorded / 2)), doubled
    raise ValueError(f"unknown calibration sampler {kind!r}")
