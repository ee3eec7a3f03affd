"""``Baseline``: one entry of the baseline registry (its numerics, calibration timesteps and how it quantizes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

Transform = Callable[[nn.Module, Any, dict], nn.Module]


def _applies_everywhere(_model: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class Baseline:
    """One baseline: ``method`` (paper), ``bits`` ("W8A8"), ``granularity`` (scales of weights and inputs),
    ``description``, the segquant ``config`` dict of its numerics, ``sampler`` ("uniform" / "normal": the
    calibration timesteps it is defined with), ``transform(model, loader, config) -> model`` (default
    ``segquant.quantize``), ``applies(model) -> reason or None`` (why it does not apply to a model),
    ``requires``: the optional package it needs (skipped with a message when missing)."""

    name: str
    method: str
    bits: str
    granularity: str
    description: str
    config: dict = field(default_factory=dict)
    sampler: str = "uniform"
    transform: Transform | None = None
    applies: Callable[[nn.Module], str | None] = _applies_everywhere
    requires: str | None = None

    def not_applicable(self, model: nn.Module) -> str | None:
        """Why this baseline cannot run on ``model`` (architecture, missing package), or ``None``."""
        if self.requires is not None:
            import importlib.util

            if importlib.util.find_spec(self.requires) is None:
                return f"package {self.requires!r} is not installed (pip install 'segquant[baselines]')"
        return self.applies(model)

    def quantize(self, model: nn.Module, calib_loader: Any) -> nn.Module:
        """Quantize ``model`` (in place where the method allows) on ``calib_loader``; returns the model."""
        if self.transform is not None:
            return self.transform(model, calib_loader, self.config)
        from segquant import quantize

        return quantize(model, calib_loader, config=self.config)
