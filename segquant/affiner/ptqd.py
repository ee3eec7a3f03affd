"""PTQD (He et al., NeurIPS 2023): correlated and residual quantization noise of the noise prediction.

Per step, the quantized prediction is modelled as ``ε̂ = (1 + k) ε + Δ'`` with ``k`` the least-squares
slope of the quantization noise ``ε̂ − ε`` on ``ε`` (one scalar per step, pooled over every fitted row
and element) and ``Δ'`` a residual uncorrelated with ``ε``, summarised per channel by its mean
``μ_c`` (bias) and variance ``σ²_c``. The correction is ``ε' = (ε̂ − μ_c) / (1 + k)``: the correlated
part is undone by the division, the residual bias by the subtraction.

The residual *variance* is what PTQD absorbs into a stochastic sampler: with DDPM / DDIM η > 0 the
sampler adds noise of variance ``σ_t²`` per step, and PTQD lowers it by the variance the residual
already injects (``σ_t'² = max(σ_t² − c_t² σ²_c / (1 + k)², 0)``, ``c_t`` the sampler's coefficient of
ε). Deterministic samplers — flow-matching Euler (SD3, FLUX, the demo models) and DDIM with η = 0 —
add no noise, so there is nothing to absorb it into: for them only the slope and the bias correction
apply, and the variance is kept in ``params[step]["var"]`` for inspection only (:meth:`residual_var`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.affiner.base import StepCorrector, channel_sums

STAT_NAMES = ("n", "x", "y", "xx", "yy", "xy")


class PTQDCorrector(StepCorrector):
    """PTQD's correction (see the module docstring); ``noise_target``, ``enable_timesteps``,
    ``packed_grid`` as in :class:`~segquant.affiner.base.StepCorrector`."""

    kind = "ptqd"

    def accumulate(self, stats, q: Tensor, fp: Tensor) -> dict[str, Tensor]:
        n = torch.full((q.shape[1],), float(q.shape[0] * q.shape[2] * q.shape[3]), dtype=q.dtype)
        new = {"n": n, "x": channel_sums(q), "y": channel_sums(fp), "xx": channel_sums(q * q),
               "yy": channel_sums(fp * fp), "xy": channel_sums(q * fp)}
        return new if stats is None else {k: stats[k] + new[k] for k in STAT_NAMES}

    def solve(self, s: dict[str, Tensor]) -> dict[str, Tensor]:
        """``k`` (scalar), per-channel residual ``bias`` and ``var`` ``(C,)``."""
        yy = s["yy"].sum().clamp_min(1e-300)
        k = (s["xy"].sum() - yy) / yy  # slope of (ε̂ − ε) on ε
        g = 1.0 + k
        mean = (s["x"] - g * s["y"]) / s["n"]
        second = (s["xx"] - 2 * g * s["xy"] + g * g * s["yy"]) / s["n"]
        return {"k": k.reshape(1), "bias": mean, "var": (second - mean * mean).clamp_min(0.0)}

    def correct(self, step: int, q: Tensor) -> Tensor:
        p = self.params[step]
        bias = p["bias"].to(q.device).reshape(1, -1, 1, 1)
        return (q - bias) / (1.0 + p["k"].to(q.device))

    def residual_var(self, step: int) -> Tensor:
        """Per-channel variance ``(C,)`` of the residual ``Δ'`` at ``step`` (for stochastic samplers)."""
        return self.params[step]["var"]
