"""Clipping calibrators: AMAX, percentile (tensor and running histogram), MSE clip search."""

from __future__ import annotations

import pytest
import torch

from segquant.algorithms.clipping import amax_clip, mse_clip, percentile_clip
from segquant.enums import DType
from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import PerChannel, PerGroup, PerTensor, block_amax, expand_scale, fake_quant, scale_from_amax


def _heavy_tailed(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Student-t with 4 degrees of freedom: heavy (polynomial) tails, finite variance
    z = torch.randn(shape, generator=gen)
    chi2 = torch.randn((4, *shape), generator=gen).pow(2).sum(0)
    return z / (chi2 / 4).sqrt()


def _qmse(x, amax, dtype):
    scale = expand_scale(scale_from_amax(amax, dtype), x.shape[-1])
    return float((x - fake_quant(x, scale, dtype)).pow(2).mean())


def test_amax_clip_is_block_amax():
    x = torch.randn(6, 16)
    for gran in (PerTensor(), PerChannel(), PerGroup(4)):
        assert torch.equal(amax_clip(x, gran), block_amax(x, gran))


def test_percentile_of_tensor():
    x = torch.arange(1, 1001, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(500)
    assert percentile_clip(x, 99.0).item() == 990.0  # nearest rank of |x|
    assert percentile_clip(x, 100.0).item() == 1000.0
    m = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    pc = percentile_clip(m, 90.0, PerChannel())
    assert pc.shape == (8, 1)
    # nearest rank: the ceil(0.9 * 64) = 58th smallest |x| of each row
    assert torch.equal(pc[:, 0], m.abs().kthvalue(58, dim=1).values)
    assert percentile_clip(m, 50.0, PerGroup(16)).shape == (8, 4)
    assert torch.all(pc <= amax_clip(m, PerChannel()))
    with pytest.raises(ConfigError, match="percentile"):
        percentile_clip(m, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentile_and_mse_beat_amax_on_heavy_tails_int4(seed):
    x = _heavy_tailed((64, 256), seed)
    amax = _qmse(x, amax_clip(x), DType.INT4)
    pct = _qmse(x, percentile_clip(x, 99.9), DType.INT4)
    mse = _qmse(x, mse_clip(x, DType.INT4, PerTensor()), DType.INT4)
    assert pct < 0.5 * amax, (pct, amax)
    assert mse < 0.5 * amax, (mse, amax)


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(), PerGroup(16)])
@pytest.mark.parametrize("dtype", [DType.INT4, DType.INT8, DType.FP8E4M3])
def test_mse_clip_never_worse_than_amax_per_block(gran, dtype):
    x = torch.cat([_heavy_tailed((8, 64), 3), torch.randn(8, 64) * 0.1])  # heavy and light rows
    a = amax_clip(x, gran)
    c = mse_clip(x, dtype, gran)
    assert c.shape == a.shape and c.dtype == torch.float32
    assert torch.all(c <= a) and torch.all(c > 0.5 * a)
    k = x.shape[-1]
    err_a = (x - fake_quant(x, expand_scale(scale_from_amax(a, dtype), k), dtype)).pow(2)
    err_c = (x - fake_quant(x, expand_scale(scale_from_amax(c, dtype), k), dtype)).pow(2)
    if isinstance(gran, PerGroup):
        err_a, err_c = err_a.reshape(16, 4, 16).sum(-1), err_c.reshape(16, 4, 16).sum(-1)
    elif isinstance(gran, PerChannel):
        err_a, err_c = err_a.sum(1), err_c.sum(1)
    else:
        err_a, err_c = err_a.sum(), err_c.sum()
    assert torch.all(err_c <= err_a * (1 + 1e-6))
    if dtype is DType.INT4:
        assert err_c.sum() < 0.95 * err_a.sum()


def test_mse_clip_grid_and_errors():
    x = torch.randn(4, 32)
    assert torch.equal(mse_clip(x, DType.INT8, PerChannel(), grid=1), amax_clip(x, PerChannel()))
    with pytest.raises(ConfigError, match="grid"):
        mse_clip(x, DType.INT8, grid=0)
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(CalibrationError, match="inf"):
        mse_clip(bad, DType.INT8)
