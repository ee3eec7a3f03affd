"""SmoothQuant: factors, alpha grid (both ends), alpha search, and W8A8 error reduction on outlier channels."""

from __future__ import annotations

import pytest
import torch

from segquant.algorithms.smoothquant import (
    alpha_grid,
    search_alpha,
    smooth_activation,
    smooth_factors,
    smooth_weight,
)
from segquant.enums import DType
from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import PerChannel, PerTensor, block_amax, dynamic_fake_quant, fake_quant, scale_from_amax


def _outlier_layer(seed=0, m=256, k=64, n=48):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    x[:, [c for c in (3, 17, 40) if c < k]] *= 60.0  # outlier input channels, as in transformer activations
    w = torch.randn(n, k, generator=gen) * 0.05
    return x, w


def test_factors_follow_the_formula():
    x, w = _outlier_layer()
    a = x.abs().amax(0)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        lam = smooth_factors(a, w, alpha)
        expected = a.pow(alpha) / w.abs().amax(0).pow(1 - alpha)
        assert lam.shape == (64,) and lam.dtype == torch.float32
        assert torch.allclose(lam, expected, rtol=1e-5)
    # larger alpha moves more of the outlier channels' range into the weight
    assert smooth_factors(a, w, 0.8)[3] > smooth_factors(a, w, 0.2)[3]


def test_factors_guard_zeros_and_clamp():
    a = torch.tensor([0.0, 2.0, 1e12, 3.0])
    w = torch.tensor([[1.0, 0.0, 1.0, 1e-12]])
    lam = smooth_factors(a, w, 0.5)
    assert lam[0] == 1 and lam[1] == 1  # zero activation / zero weight channel
    assert lam[2] == 1e5  # clamped
    assert torch.isfinite(lam).all() and (lam > 0).all()
    with pytest.raises(ConfigError, match="alpha"):
        smooth_factors(a, w, 1.5)
    with pytest.raises(ConfigError, match="does not match"):
        smooth_factors(a[:3], w, 0.5)


def test_smoothing_is_an_identity_before_quantization_and_pure():
    x, w = _outlier_layer(1)
    x0, w0 = x.clone(), w.clone()
    lam = smooth_factors(x.abs().amax(0), w, 0.5)
    y = smooth_activation(x, lam) @ smooth_weight(w, lam).T
    assert torch.allclose(y, x @ w.T, rtol=1e-4, atol=1e-3)
    assert torch.equal(x, x0) and torch.equal(w, w0)
    assert smooth_activation(x.half(), lam).dtype == torch.float16


@pytest.mark.parametrize(
    "lo,hi,step,expected",
    [
        (0.0, 1.0, 0.1, [round(0.1 * i, 10) for i in range(11)]),
        (0.0, 1.0, 0.3, [0.0, 0.3, 0.6, 0.9, 1.0]),
        (0.0, 1.0, 0.25, [0.0, 0.25, 0.5, 0.75, 1.0]),
        (0.4, 0.6, 0.05, [0.4, 0.45, 0.5, 0.55, 0.6]),
        (0.5, 0.5, 0.1, [0.5]),
        (0.2, 0.9, 1.0, [0.2, 0.9]),
    ],
)
def test_alpha_grid_includes_both_ends(lo, hi, step, expected):
    grid = alpha_grid(lo, hi, step)
    assert grid == expected
    assert grid[0] == lo and grid[-1] == hi


def test_alpha_grid_errors():
    with pytest.raises(ConfigError, match="step"):
        alpha_grid(0, 1, 0)
    with pytest.raises(ConfigError, match="min"):
        alpha_grid(0.8, 0.2, 0.1)
    with pytest.raises(ConfigError, match="max"):
        alpha_grid(0.0, 1.5, 0.1)


def test_search_evaluates_every_candidate_and_breaks_ties_early():
    x, w = _outlier_layer(2, m=8, k=4, n=3)
    ref = x @ w.T
    seen = []

    def best_at_end(alpha):  # the last candidate is the best: it must be evaluated
        seen.append(alpha)
        return ref + (1.0 - alpha)

    grid = alpha_grid(0, 1, 0.3)
    best, errors = search_alpha(x, w, grid, best_at_end)
    assert seen == grid and best == 1.0 and len(errors) == 5
    assert errors[-1] == pytest.approx(0.0, abs=1e-10)
    tie = search_alpha(x, w, [0.2, 0.4, 0.6], lambda a: ref + (0.0 if a > 0.3 else 1.0))
    assert tie[0] == 0.4  # equal errors: the earliest wins
    nan_first = search_alpha(x, w, [0.1, 0.2], lambda a: ref * float("nan") if a == 0.1 else ref + 1)
    assert nan_first[0] == 0.2
    with pytest.raises(CalibrationError, match="non-finite"):
        search_alpha(x, w, [0.1], lambda a: ref * float("nan"))
    with pytest.raises(CalibrationError, match="returned"):
        search_alpha(x, w, [0.1], lambda a: ref[:, :2])


def fake_quant_smoothed_layer(x, weight, act_absmax, weight_dtype, act_dtype, weight_granularity, act_granularity):
    """``alpha -> y_hat`` ``(M, N)`` for :func:`search_alpha`: static RTN fake-quant of ``x / λ`` and ``W · λ``,
    the activation scale from ``act_absmax / λ`` (what an observer would have seen)."""
    k = weight.shape[1]

    def quantize_layer(alpha):
        lam = smooth_factors(act_absmax, weight, alpha)
        w = smooth_weight(weight.float(), lam)
        w_hat = fake_quant(w, scale_from_amax(block_amax(w, weight_granularity), weight_dtype), weight_dtype)
        a_amax = block_amax((act_absmax.float() / lam).reshape(1, k), act_granularity)
        return fake_quant(smooth_activation(x.float(), lam), scale_from_amax(a_amax, act_dtype), act_dtype) @ w_hat.T

    return quantize_layer


def _w8a8_err(x, w, alpha):
    """Output MSE of per-tensor INT8 weights and activations after smoothing with ``alpha`` (None: plain RTN)."""
    ref = x @ w.T
    if alpha is None:
        y = dynamic_fake_quant(x, DType.INT8, PerTensor()) @ dynamic_fake_quant(w, DType.INT8, PerTensor()).T
        return float((y - ref).pow(2).mean())
    layer = fake_quant_smoothed_layer(x, w, x.abs().amax(0), DType.INT8, DType.INT8, PerTensor(), PerTensor())
    return float((layer(alpha) - ref).pow(2).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothing_reduces_w8a8_error_on_outlier_channels(seed):
    x, w = _outlier_layer(seed)
    rtn = _w8a8_err(x, w, None)
    smooth = _w8a8_err(x, w, 0.5)
    assert smooth < 0.5 * rtn, (smooth, rtn)


@pytest.mark.parametrize("seed", [0, 3])
def test_search_never_worse_than_half(seed):
    x, w = _outlier_layer(seed)
    layer = fake_quant_smoothed_layer(x, w, x.abs().amax(0), DType.INT8, DType.INT8, PerChannel(), PerTensor())
    grid = alpha_grid(0.0, 1.0, 0.1)
    best, errors = search_alpha(x, w, grid, layer)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(errors) == 11
    assert errors[grid.index(best)] <= errors[grid.index(0.5)]
    assert errors[grid.index(best)] == min(errors)
    # the search's errors are the layer's true output MSE
    assert errors[grid.index(0.5)] == pytest.approx(float((layer(0.5) - x @ w.T).pow(2).mean()), rel=1e-6)
