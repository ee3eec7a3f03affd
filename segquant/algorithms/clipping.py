"""Clipping calibrators: choose the amax (clip value) from which a scale ``amax / qmax`` is made.

* AMAX: the largest magnitude — no clipping, every value representable, coarse steps if outliers.
* Percentile: the ``p``-th percentile of ``|x|`` — clips the rarest outliers (activations: of the
  bounded reservoir sample that the calibration observer keeps).
* MSE: the candidate ``c · amax`` (``c ∈ (lo, 1]``) minimising the fake-quantization MSE, per block.

Every calibrator returns a float32 scale-shaped amax (see ``segquant.numerics``): ``(1, 1)`` per
tensor, ``(rows, 1)`` per channel/token, ``(rows, K // g)`` per group.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.errors import ConfigError
from segquant.numerics import (
    Granularity,
    PerGroup,
    PerTensor,
    as_matrix,
    block_amax,
    check_finite,
    fake_quant,
    scale_from_amax,
)

logger = logging.getLogger(__name__)


def amax_clip(x: Tensor, granularity: Granularity = PerTensor()) -> Tensor:
    """``max|x|`` per block of ``x`` ``(..., K)``: float32, scale-shaped."""
    return block_amax(x, granularity)


def _blocks(x: Tensor, granularity: Granularity) -> tuple[Tensor, tuple[int, int]]:
    """``|x|`` as ``(n_blocks, block_elems)`` float32, and the scale shape to reshape results to."""
    m = as_matrix(x).float().abs()
    rows, k = m.shape
    if isinstance(granularity, PerTensor):
        return m.reshape(1, -1), (1, 1)
    if isinstance(granularity, PerGroup):
        g = granularity.group_size
        if k % g:
            raise ConfigError(f"group_size: {g} does not divide the feature dim {k}")
        return m.reshape(rows * (k // g), g), (rows, k // g)
    return m, (rows, 1)


def percentile_clip(x: Tensor, percentile: float, granularity: Granularity = PerTensor()) -> Tensor:
    """The ``percentile``-th percentile of ``|x|`` per block of ``x`` ``(..., K)`` (nearest rank), float32
    scale-shaped. ``percentile`` is in ``(0, 100]``; 100 equals :func:`amax_clip`.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ConfigError(f"percentile: {percentile!r} must be in (0, 100]")
    check_finite(x, "percentile_clip input")
    blocks, shape = _blocks(x, granularity)
    kth = max(1, math.ceil(percentile / 100.0 * blocks.shape[1]))
    return blocks.kthvalue(kth, dim=1).values.reshape(shape)


def mse_clip(
    x: Tensor, dtype: DType, granularity: Granularity = PerTensor(), grid: int = 100, lo: float = 0.5
) -> Tensor:
    """Per block, the clip ``c · amax`` with ``c ∈ {1, 1 − δ, …, lo + δ}`` (``grid`` candidates,
    ``δ = (1 − lo) / grid``) that minimises ``Σ (x − Q(x))²``; float32 scale-shaped.

    ``c = 1`` (plain AMAX) is a candidate and wins ties, so the result is never worse than AMAX.
    ``x`` ``(..., K)`` any float dtype; fake-quant is symmetric ``dtype`` with the chosen scale.
    """
    if not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"grid: {grid!r} must be a positive integer")
    if not 0.0 <= lo < 1.0:
        raise ConfigError(f"lo: {lo!r} must be in [0, 1)")
    check_finite(x, "mse_clip input")
    m = as_matrix(x).float()
    amax = block_amax(m, granularity)
    best_amax, best_err = amax.clone(), _block_sq_error(m, amax, dtype, granularity)
    for i in range(1, grid):
        cand = amax * (1.0 - (1.0 - lo) * i / grid)
        err = _block_sq_error(m, cand, dtype, granularity)
        better = err < best_err
        best_amax = torch.where(better, cand, best_amax)
        best_err = torch.where(better, err, best_err)
    return best_amax


def _block_sq_error(m: Tensor, amax: Tensor, dtype: DType, granularity: Granularity) -> Tensor:
    """Sum of squared fake-quant errors of ``m`` ``(rows, K)`` per block, scale-shaped."""
    rows, k = m.shape
    scale = scale_from_amax(amax, dtype)
    if isinstance(granularity, PerGroup):
        g = granularity.group_size
        grouped = m.reshape(rows, k // g, g)
        return (grouped - fake_quant(grouped, scale.unsqueeze(-1), dtype)).pow(2).sum(-1)
    sq = (m - fake_quant(m, scale, dtype)).pow(2)
    return sq.sum().reshape(1, 1) if isinstance(granularity, PerTensor) else sq.sum(1, keepdim=True)
