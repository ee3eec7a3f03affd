"""Clipping calibrators: choose the amax (clip value) from which a scale ``amax / qmax`` is made.

* AMAX: the largest magnitude — no clipping, every value representable, coarse steps if outliers.
* Percentile: the ``p``-th percentile of ``|x|`` — clips the rarest outliers (for activations, a
  bounded-memory running :class:`HistogramObserver`).
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
from segquant.errors import CalibrationError, ConfigError
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


def percentile_clip(x: Tensor | HistogramObserver, percentile: float, granularity: Granularity = PerTensor()) -> Tensor:
    """The ``percentile``-th percentile of ``|x|`` per block (nearest rank), float32 scale-shaped.

    ``x`` is a tensor ``(..., K)`` or a :class:`HistogramObserver` (per tensor only).
    ``percentile`` is in ``(0, 100]``; 100 equals :func:`amax_clip`.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ConfigError(f"percentile: {percentile!r} must be in (0, 100]")
    if isinstance(x, HistogramObserver):
        if not isinstance(granularity, PerTensor):
            raise ConfigError(
                f"percentile_clip: a HistogramObserver is per tensor; granularity {granularity!r} is not possible"
            )
        return x.percentile(percentile).reshape(1, 1)
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


class HistogramObserver:
    """Running histogram of ``|x|`` over ``[0, hi]`` with ``bins`` equal bins; memory ``O(bins)``.

    When a batch exceeds ``hi``, the range doubles (as often as needed) and adjacent bins are merged
    pairwise, so earlier counts are kept exactly at the coarser resolution. Percentiles are linear
    interpolations inside the bin that holds them (error below one bin width).
    """

    def __init__(self, bins: int = 2048) -> None:
        if not isinstance(bins, int) or bins < 2 or bins & (bins - 1):
            raise ConfigError(f"bins: {bins!r} must be a power of two >= 2")
        self.bins = bins
        self.hi = 0.0
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.n = 0

    def update(self, x: Tensor) -> None:
        """Add ``|x|`` of ``x`` (any shape, any float dtype); NaN/inf raise :class:`CalibrationError`."""
        check_finite(x, "HistogramObserver input")
        v = x.detach().reshape(-1).abs().float()
        if v.numel() == 0:
            return
        amax = float(v.max())
        if self.hi == 0.0:
            self.hi = amax if amax > 0 else 0.0
        elif amax > self.hi:
            self._grow(amax)
        if self.hi > 0:
            idx = (v / self.hi * self.bins).long().clamp_(0, self.bins - 1)
            self.counts += torch.bincount(idx, minlength=self.bins).to(device="cpu", dtype=torch.float64)
        else:
            self.counts[0] += v.numel()  # all zeros so far
        self.n += v.numel()

    def _grow(self, amax: float) -> None:
        factor = 1
        while self.hi * factor < amax:
            factor *= 2
        if factor >= self.bins:
            merged = torch.zeros(self.bins, dtype=torch.float64)
            merged[0] = self.counts.sum()
        else:
            merged = torch.cat(
                [
                    self.counts.reshape(-1, factor).sum(1),
                    torch.zeros(self.bins - self.bins // factor, dtype=torch.float64),
                ]
            )
        self.counts, self.hi = merged, self.hi * factor

    def percentile(self, percentile: float) -> Tensor:
        """The ``percentile``-th percentile of ``|x|`` seen so far, a 0-D float32 tensor."""
        if self.n == 0:
            raise CalibrationError("HistogramObserver: no samples were observed")
        if self.hi == 0.0:
            return torch.tensor(0.0)
        target = percentile / 100.0 * self.n
        cdf = torch.cumsum(self.counts, 0)
        b = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64)).clamp(max=self.bins - 1))
        before = float(cdf[b - 1]) if b > 0 else 0.0
        inside = float(self.counts[b])
        frac = (target - before) / inside if inside > 0 else 1.0
        width = self.hi / self.bins
        return torch.tensor((b + min(max(frac, 0.0), 1.0)) * width, dtype=torch.float32)

    def amax(self) -> Tensor:
        """Upper edge of the highest non-empty bin (≥ the true max by less than one bin width)."""
        nz = torch.nonzero(self.counts).flatten()
        top = int(nz[-1]) + 1 if nz.numel() else 0
        return torch.tensor(top * self.hi / self.bins, dtype=torch.float32)
