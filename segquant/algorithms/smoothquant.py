"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights.

For a linear layer ``y = x Wᵀ`` with ``x`` ``(M, K)`` and ``W`` ``(N, K)``, a per-input-channel factor

    λ_j = max|x_j|^α / max|W_:,j|^(1−α)

gives the mathematically identical ``y = (x / λ) (W · λ)ᵀ``, where ``x / λ`` has flatter channels and
``W · λ`` absorbs the difference. ``α`` trades activation for weight difficulty; it is fixed or searched
on a grid by the layer's output error on calibration activations. With output segments, each segment
``W_s`` (rows of ``W``) gets its own ``λ_s``: call these functions on ``W_s``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from segquant.errors import CalibrationError, ConfigError

logger = logging.getLogger(__name__)

LAMBDA_MIN = 1e-5
LAMBDA_MAX = 1e5


def smooth_factors(act_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant factors ``λ`` ``(K,)`` float32.

    Args:
        act_absmax: ``(K,)`` per-input-channel ``max|x_j|`` over the calibration activations.
        weight: ``(N, K)`` weight (or one output segment's rows).
        alpha: migration strength in ``[0, 1]``.

    Channels where either maximum is 0 get ``λ = 1`` (nothing to migrate); the rest are clamped to
    ``[1e-5, 1e5]`` so that neither side under- or overflows in 16-bit.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha: {alpha!r} must be in [0, 1]")
    if weight.dim() != 2 or act_absmax.shape != (weight.shape[1],):
        raise ConfigError(
            f"smooth_factors: act_absmax {tuple(act_absmax.shape)} does not match weight {tuple(weight.shape)}"
        )
    a = act_absmax.float().abs()
    w = weight.float().abs().amax(dim=0)
    ok = (a > 0) & (w > 0)
    a_safe = torch.where(ok, a, torch.ones_like(a))
    w_safe = torch.where(ok, w, torch.ones_like(w))
    lam = a_safe.pow(alpha) / w_safe.pow(1.0 - alpha)
    return torch.where(ok, lam, torch.ones_like(lam)).clamp(LAMBDA_MIN, LAMBDA_MAX)


def smooth_weight(weight: Tensor, lam: Tensor) -> Tensor:
    """``W · λ`` (columns scaled): ``(N, K)`` in ``weight.dtype``; ``lam`` is ``(K,)``."""
    return (weight.float() * lam.float()).to(weight.dtype)


def smooth_activation(x: Tensor, lam: Tensor) -> Tensor:
    """``x / λ``: ``(..., K)`` in ``x.dtype``; ``lam`` is ``(K,)``. A new tensor; ``x`` is untouched."""
    return (x.float() / lam.float()).to(x.dtype)


def alpha_grid(lo: float, hi: float, step: float) -> list[float]:
    """Candidate alphas ``lo, lo+step, …`` up to and **including** ``hi``.

    ``alpha_grid(0, 1, 0.1)`` has 11 points; ``alpha_grid(0, 1, 0.3)`` is ``[0, 0.3, 0.6, 0.9, 1.0]``.
    Values are rounded to 10 decimals so that ``0.1 * 3`` reads as ``0.3``.
    """
    lo, hi, step = float(lo), float(hi), float(step)
    if not (0.0 <= lo <= hi <= 1.0):
        raise ConfigError(f"search_alpha_config: need 0 <= min <= max <= 1, got min={lo}, max={hi}")
    if not step > 0:
        raise ConfigError(f"search_alpha_config.step: {step!r} must be > 0")
    n = int(math.floor((hi - lo) / step + 1e-9))
    grid = [round(lo + i * step, 10) for i in range(n + 1)]
    if hi - grid[-1] > 1e-9:
        grid.append(round(hi, 10))
    return grid


def search_alpha(
    x: Tensor,
    weight: Tensor,
    grid: Sequence[float],
    quantize_layer: Callable[[float], Tensor],
) -> tuple[float, list[float]]:
    """Pick the alpha whose quantized layer output is closest to the full-precision one.

    Args:
        x: ``(M, K)`` calibration activations of the layer (any float dtype).
        weight: ``(N, K)`` full-precision weight (or one output segment).
        grid: candidate alphas, e.g. from :func:`alpha_grid`.
        quantize_layer: ``alpha -> y_hat`` ``(M, N)``, the quantized layer's output on ``x`` with
            smoothing strength ``alpha`` (the caller decides dtype, granularity, segments, branch).

    Returns:
        ``(best_alpha, errors)`` with ``errors[i]`` the float32 MSE of ``grid[i]`` against ``x Wᵀ``;
        ties go to the earliest candidate. Non-finite errors never win; if all are, raises
        :class:`CalibrationError`.
    """
    if len(grid) == 0:
        raise ConfigError("search_alpha: the alpha grid is empty")
    ref = x.float() @ weight.float().T
    errors: list[float] = []
    for alpha in grid:
        y_hat = quantize_layer(alpha)
        if y_hat.shape != ref.shape:
            raise CalibrationError(
                f"search_alpha: quantize_layer({alpha}) returned {tuple(y_hat.shape)}, expected {tuple(ref.shape)}"
            )
        errors.append(float((y_hat.float() - ref).pow(2).mean()))
    finite = [(e, i) for i, e in enumerate(errors) if math.isfinite(e)]
    if not finite:
        raise CalibrationError(f"search_alpha: every candidate alpha in {list(grid)} gave a non-finite output error")
    best = min(finite)[1]
    logger.debug("search_alpha: errors %s -> alpha %s", dict(zip(grid, errors, strict=True)), grid[best])
    return float(grid[best]), errors
