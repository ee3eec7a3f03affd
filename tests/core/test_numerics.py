"""Numerics against an independent float64 reference, for every DType x granularity x static/dynamic."""

import itertools

import pytest
import torch

from segquant.enums import DType
from segquant.errors import CalibrationError
from segquant.numerics import (PerChannel, PerGroup, PerTensor, PerToken, asymmetric_params, block_amax,
                               check_finite, dynamic_fake_quant, expand_scale, fake_quant, scale_from_amax)

QUANT_DTYPES = [DType.INT4, DType.INT6, DType.INT8, DType.INT16, DType.FP8E4M3, DType.FP8E5M2]
GRANULARITIES = [PerTensor(), PerChannel(), PerToken(), PerGroup(8)]


def fp8_grid(dtype: DType) -> torch.Tensor:
    """Every finite value of the float8 format, ascending, as float64."""
    values = torch.arange(256, dtype=torch.uint8).view(dtype.torch_dtype).to(torch.float64)
    return torch.unique(values[torch.isfinite(values)])


def reference_fake_quant(x: torch.Tensor, scale: torch.Tensor, dtype: DType) -> torch.Tensor:
    """Textbook quantize-dequantize in float64 (independent of segquant.numerics)."""
    v = x.double() / scale.double()
    if dtype.is_int:
        bits = dtype.bits
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        floor = torch.floor(v)
        frac = v - floor
        # round half to even, written out
        up = (frac > 0.5) | ((frac == 0.5) & (torch.remainder(floor, 2) == 1))
        q = (floor + up.double()).clamp(lo, hi)
        return q * scale.double()
    grid = fp8_grid(dtype)
    v = v.clamp(grid[0], grid[-1])
    idx = torch.searchsorted(grid, v).clamp(1, len(grid) - 1)
    below, above = grid[idx - 1], grid[idx]
    pick_above = (above - v) < (v - below)
    tie = (above - v) == (v - below)
    # ties go to the code with an even bit pattern (even mantissa)
    pick_above = pick_above | (tie & _code_is_even(above, dtype))
    return torch.where(pick_above, above, below) * scale.double()


def _code_is_even(values: torch.Tensor, dtype: DType) -> torch.Tensor:
    codes = values.to(dtype.torch_dtype).view(torch.uint8)
    return (codes % 2) == 0


def reference_scale(x: torch.Tensor, dtype: DType, granularity) -> torch.Tensor:
    m = x.reshape(-1, x.shape[-1]).double().abs()
    if isinstance(granularity, PerTensor):
        amax = m.max().reshape(1, 1)
    elif isinstance(granularity, PerGroup):
        amax = m.reshape(m.shape[0], -1, granularity.group_size).amax(-1)
        amax = amax.repeat_interleave(granularity.group_size, dim=1)
    else:
        amax = m.amax(dim=1, keepdim=True)
    qmax = (2 ** (dtype.bits - 1) - 1) if dtype.is_int else float(torch.finfo(dtype.torch_dtype).max)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))


@pytest.mark.parametrize("dtype,granularity", list(itertools.product(QUANT_DTYPES, GRANULARITIES)))
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_fake_quant_matches_float64_reference(dtype, granularity, mode):
    torch.manual_seed(0)
    x = torch.randn(6, 5, 32) * torch.logspace(-2, 1, 32)
    expected = reference_fake_quant(x.reshape(-1, 32), reference_scale(x, dtype, granularity), dtype)
    if mode == "dynamic":
        got = dynamic_fake_quant(x, dtype, granularity)
    else:  # static: scales computed once (calibration) and reused
        scale = expand_scale(scale_from_amax(block_amax(x, granularity), dtype), 32)
        got = fake_quant(x.reshape(-1, 32), scale, dtype)
    got = got.reshape(-1, 32).double()
    scale64 = reference_scale(x, dtype, granularity)
    # float32 division may land on the other side of a rounding boundary when the exact quotient is within
    # float32 resolution of it: there (only) one quantization step of difference is allowed.
    v = x.reshape(-1, 32).double() / scale64
    near_tie = ((v - torch.floor(v)) - 0.5).abs() < 4e-7 * v.abs().clamp(min=1)
    if dtype.is_int:
        assert ((got - expected).abs() <= scale64 * 1.0001)[near_tie].all()
        got, expected = got[~near_tie], expected[~near_tie]
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7 * float(x.abs().max()))


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_all_zero_tensor_stays_zero(dtype):
    x = torch.zeros(4, 16)
    out = dynamic_fake_quant(x, dtype, PerTensor())
    assert torch.equal(out, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
def test_clip_boundary_is_exact_and_beyond_saturates(dtype):
    scale = torch.tensor(0.5)
    top = dtype.qmax * 0.5
    x = torch.tensor([top, -top, 10 * top, -10 * top])
    out = fake_quant(x, scale, dtype)
    assert out[0] == top and out[1] == -top
    assert out[2] == top  # saturates to qmax, never inf
    assert out[3] == dtype.qmin * 0.5


def test_integer_rounding_ties_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    out = fake_quant(x, torch.tensor(1.0), DType.INT8)
    assert out.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0]


@pytest.mark.parametrize("input_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_keep_dtype_and_match_fp32(input_dtype):
    torch.manual_seed(1)
    x = torch.randn(8, 64).to(input_dtype)
    out = dynamic_fake_quant(x, DType.INT8, PerToken())
    assert out.dtype == input_dtype
    ref = dynamic_fake_quant(x.float(), DType.INT8, PerToken())
    torch.testing.assert_close(out.float(), ref.to(input_dtype).float())


def test_passthrough_types_are_casts():
    x = torch.randn(4, 8, dtype=torch.float32)
    assert torch.equal(dynamic_fake_quant(x, DType.BF16, PerTensor()), x.to(torch.bfloat16).float())
    assert torch.equal(dynamic_fake_quant(x, DType.FP16, PerTensor()), x.half().float())


@pytest.mark.parametrize("dtype", [DType.INT4, DType.INT8])
def test_asymmetric_uses_zero_point_and_represents_zero(dtype):
    x = torch.linspace(0.0, 3.0, 64).reshape(4, 16)
    symmetric = dynamic_fake_quant(x, dtype, PerTensor())
    asymmetric = dynamic_fake_quant(x, dtype, PerTensor(), symmetric=False)
    assert (asymmetric - x).abs().max() < (symmetric - x).abs().max()
    scale, zero_point = asymmetric_params(torch.tensor(0.0), torch.tensor(3.0), dtype)
    assert fake_quant(torch.tensor(0.0), scale, dtype, zero_point) == 0.0


def test_group_must_divide_features():
    from segquant.errors import ConfigError

    with pytest.raises(ConfigError, match="group_size"):
        dynamic_fake_quant(torch.randn(2, 10), DType.INT8, PerGroup(4))


def test_nan_and_inf_are_reported_in_calibration():
    with pytest.raises(CalibrationError, match="NaN"):
        check_finite(torch.tensor([1.0, float("nan")]), "layer x")
    with pytest.raises(CalibrationError, match="inf"):
        check_finite(torch.tensor([1.0, float("inf")]), "layer x")


def test_fake_quant_does_not_modify_input():
    x = torch.randn(4, 16)
    copy = x.clone()
    dynamic_fake_quant(x, DType.INT4, PerGroup(4))
    fake_quant(x, torch.tensor(0.1), DType.FP8E4M3)
    assert torch.equal(x, copy)
