"""GPTQ: the fast blocked/Cholesky version against a slow textbook OBS version, and against RTN."""

from __future__ import annotations

import pytest
import torch

from segquant.algorithms.gptq import GPTQResult, gptq_quantize
from segquant.observers import HessianObserver
from segquant.enums import DType
from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import PerChannel, PerGroup, PerTensor, block_amax, expand_scale, fake_quant, scale_from_amax


def _amax_scale(block: torch.Tensor, dtype: DType) -> torch.Tensor:
    """Per-row abs-max scale ``(N,)`` float32 of a ``(N, c)`` block."""
    return scale_from_amax(block.abs().amax(dim=1), dtype)


def gptq_reference(weight, hessian, dtype, granularity, percdamp=0.01, actorder=False, static_groups=False):
    """Textbook GPTQ in float64: one column at a time, explicit inverse-Hessian (OBS) updates.

    Returns ``(W_hat (N, K) float64, scale (N, G) float32)`` in the original column order.
    """
    w = weight.double().clone()
    h = hessian.double().clone()
    n, k = w.shape
    dead = torch.diag(h) == 0
    for j in torch.nonzero(dead).flatten().tolist():
        h[j, j] = 1.0
        w[:, j] = 0.0
    order = torch.argsort(torch.diag(h), descending=True, stable=True).tolist() if actorder else list(range(k))
    h = h + percdamp * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    g = granularity.group_size if isinstance(granularity, PerGroup) else None
    if isinstance(granularity, PerTensor):
        scale = scale_from_amax(w.abs().max(), dtype).expand(n, 1).clone()
    elif g is None:
        scale = _amax_scale(w, dtype)[:, None]
    else:
        scale = torch.zeros(n, k // g, dtype=torch.float32)
        if static_groups:
            for gi in range(k // g):
                scale[:, gi] = _amax_scale(w[:, gi * g : (gi + 1) * g], dtype)
    w_hat = torch.zeros_like(w)
    for pos, q in enumerate(order):
        if g is None:
            gi = 0
        elif static_groups:
            gi = q // g
        else:
            gi = pos // g
            if pos % g == 0:  # a new group starts: scale from its current (compensated) columns
                scale[:, gi] = _amax_scale(w[:, order[pos : pos + g]], dtype)
        s = scale[:, gi : gi + 1].double()
        w_hat[:, q] = fake_quant(w[:, q : q + 1], s, dtype)[:, 0]
        err = w[:, q] - w_hat[:, q]
        rest = order[pos + 1 :]
        w[:, rest] -= torch.outer(err / hinv[q, q], hinv[q, rest])
        hinv = hinv - torch.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return w_hat, scale


def _problem(n, k, m=None, seed=0, dead=()):
    gen = torch.Generator().manual_seed(seed)
    m = m or 4 * k
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    x = torch.randn(m, k, generator=gen) @ mix  # correlated inputs
    x[:, list(dead)] = 0.0
    obs = HessianObserver(k)
    obs.update(x)
    return torch.randn(n, k, generator=gen), obs.hessian(), x


CASES = [
    # (n, k, granularity, blocksize, actorder, static_groups)
    (8, 20, PerChannel(), 8, False, False),  # K not a multiple of blocksize
    (12, 37, PerTensor(), 16, False, False),
    (8, 48, PerGroup(8), 16, False, False),
    (8, 48, PerGroup(12), 16, False, False),  # groups straddle blocks
    (6, 48, PerGroup(24), 10, True, False),  # act-order, dynamic groups, odd blocksize
    (6, 48, PerGroup(16), 32, True, True),  # act-order + static groups
    (10, 33, PerChannel(), 128, True, False),  # one block larger than K
]


@pytest.mark.parametrize("n,k,gran,bs,actorder,static", CASES)
def test_fast_matches_textbook_float64(n, k, gran, bs, actorder, static):
    weight, hessian, _ = _problem(n, k, seed=k + n, dead=(3,))
    ref, ref_scale = gptq_reference(weight, hessian, DType.INT4, gran, actorder=actorder, static_groups=static)
    res = gptq_quantize(
        weight.double(), hessian, DType.INT4, gran, blocksize=bs, actorder=actorder, static_groups=static
    )
    assert torch.allclose(res.scale, ref_scale, rtol=1e-6, atol=0)
    assert torch.allclose(res.dequantize().double(), ref, rtol=1e-6, atol=1e-9)
    assert torch.all(res.codes[:, 3] == 0)  # dead column quantized to 0


@pytest.mark.parametrize("n,k,gran,bs,actorder,static", CASES)
def test_fast_float32_matches_textbook(n, k, gran, bs, actorder, static):
    weight, hessian, _ = _problem(n, k, seed=100 + k)
    ref, _ = gptq_reference(weight, hessian, DType.INT8, gran, actorder=actorder, static_groups=static)
    res = gptq_quantize(weight, hessian, DType.INT8, gran, blocksize=bs, actorder=actorder, static_groups=static)
    w_hat = res.dequantize().double()
    step = res.scale.double().max()
    # float32 vs float64: identical except rare rounding flips of one quantization step
    assert (w_hat - ref).abs().max() <= step * 1.01
    assert ((w_hat - ref).abs() > 1e-4 * step).float().mean() < 0.02


def test_result_layout_and_scales_used_at_inference():
    weight, hessian, _ = _problem(8, 32, seed=3)
    res = gptq_quantize(weight, hessian, DType.INT4, PerGroup(8), blocksize=16, actorder=True)
    assert isinstance(res, GPTQResult)
    assert res.codes.dtype == torch.int8 and res.codes.shape == (8, 32)
    assert res.scale.dtype == torch.float32 and res.scale.shape == (8, 4)
    assert res.g_idx.dtype == torch.int64 and res.g_idx.shape == (32,)
    assert res.perm is not None and sorted(res.perm.tolist()) == list(range(32))
    assert torch.equal(torch.bincount(res.g_idx), torch.full((4,), 8))  # each group has 8 columns
    assert res.codes.min() >= -8 and res.codes.max() <= 7
    manual = res.codes.float() * res.scale[:, res.g_idx]
    assert torch.equal(res.dequantize(), manual)
    # groups follow the processing order: the first 8 columns processed form group 0
    assert torch.all(res.g_idx[res.perm[:8]] == 0)
    # static groups keep contiguous original groups (kernel-friendly)
    st = gptq_quantize(weight, hessian, DType.INT4, PerGroup(8), actorder=True, static_groups=True)
    assert torch.equal(st.g_idx, torch.arange(32) // 8)


def test_per_tensor_scale_is_shared_and_inputs_untouched():
    weight, hessian, _ = _problem(8, 24, seed=4)
    w0, h0 = weight.clone(), hessian.clone()
    res = gptq_quantize(weight, hessian, DType.INT8, PerTensor())
    assert res.scale.shape == (8, 1) and torch.all(res.scale == res.scale[0, 0])
    assert torch.allclose(res.scale[0, 0], weight.abs().max() / 127)
    assert torch.equal(weight, w0) and torch.equal(hessian, h0)


def _out_err(x, w, w_hat):
    return ((x @ w.T - x @ w_hat.T).norm() / (x @ w.T).norm()).item()


@pytest.mark.parametrize("gran", [PerChannel(), PerGroup(16), PerGroup(32), PerGroup(64)])
@pytest.mark.parametrize("actorder", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(gran, actorder):
    weight, hessian, x = _problem(32, 128, m=1024, seed=7)
    res = gptq_quantize(weight, hessian, DType.INT4, gran, blocksize=32, actorder=actorder)
    rtn = fake_quant(weight, expand_scale(scale_from_amax(block_amax(weight, gran), DType.INT4), 128), DType.INT4)
    e_gptq, e_rtn = _out_err(x, weight, res.dequantize()), _out_err(x, weight, rtn)
    assert e_gptq < 0.85 * e_rtn, (e_gptq, e_rtn)


def test_fp8_and_custom_clip():
    weight, hessian, x = _problem(16, 64, seed=8)
    res = gptq_quantize(weight, hessian, DType.FP8E4M3, PerChannel())
    assert res.codes.dtype == torch.float8_e4m3fn
    assert _out_err(x, weight, res.dequantize()) < 0.05
    half = gptq_quantize(weight, hessian, DType.INT4, PerChannel(), clip_fn=lambda b, g: block_amax(b, g) * 0.5)
    assert torch.allclose(half.scale[:, 0], weight.abs().amax(1) * 0.5 / 7)


def test_errors():
    weight, hessian, _ = _problem(4, 16, seed=9)
    with pytest.raises(ConfigError, match="groupsize"):
        gptq_quantize(weight, hessian, DType.INT4, PerGroup(5))
    with pytest.raises(ConfigError, match="blocksize"):
        gptq_quantize(weight, hessian, DType.INT4, blocksize=0)
    with pytest.raises(ConfigError, match="fp16"):
        gptq_quantize(weight, hessian, DType.FP16)
    with pytest.raises(CalibrationError, match="Hessian shape"):
        gptq_quantize(weight, hessian[:8, :8], DType.INT4)
    bad = hessian.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        gptq_quantize(weight, bad, DType.INT4)
    with pytest.raises(CalibrationError, match="percdamp"):
        gptq_quantize(weight, -torch.eye(16), DType.INT4, percdamp=0.0)
