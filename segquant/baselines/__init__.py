"""Quantizer baselines (PTQ4DM, Q-Diffusion, PTQ4DiT, SVDQuant, established tools) for ``segquant eval``;
see :mod:`segquant.baselines.registry`."""

from segquant.baselines.registry import BASELINES, Baseline, parse_baselines

__all__ = ["BASELINES", "Baseline", "parse_baselines"]
