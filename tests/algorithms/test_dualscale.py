"""DualScale: the scale pair, the split fake-quant (static and dynamic), the activation kinds."""

import pytest
import torch

from segquant.algorithms.dualscale import (ACTIVATION_KINDS, dualscale_scales, dynamic_fake_quant_dualscale,
                                           fake_quant_dualscale, uses_dualscale)
from segquant.enums import DType
from segquant.numerics import PerGroup, PerToken, fake_quant, scale_from_amax


def test_dualscale_uses_full_negative_range_and_separate_scales():
    x = torch.tensor([-0.2, -0.1, 0.0, 1.0, 4.0])
    pos, neg = scale_from_amax(torch.tensor(4.0), DType.INT8), scale_from_amax(torch.tensor(0.2), DType.INT8,
                                                                               negative=True)
    assert neg == pytest.approx(0.2 / 128)
    out = fake_quant_dualscale(x, pos, neg, DType.INT8)
    single = fake_quant(x, scale_from_amax(torch.tensor(4.0), DType.INT8), DType.INT8)
    dual_error, single_error = (out[:2] - x[:2]).abs().max(), (single[:2] - x[:2]).abs().max()
    assert dual_error <= float(neg) / 2 + 1e-7  # the negative side gets its own fine step
    assert dual_error * 10 < single_error
    assert out[3:].tolist() == single[3:].tolist()  # positive side unchanged


def test_scale_pair_from_signed_min_max():
    lo, hi = torch.tensor([[-0.256, 0.5]]), torch.tensor([[12.7, 3.0]])
    pos, neg = dualscale_scales(lo, hi, DType.INT8)
    assert torch.allclose(pos, torch.tensor([[0.1, 3.0 / 127]]))
    assert torch.allclose(neg, torch.tensor([[0.002, 1.0]]))  # no negative side in the 2nd block: scale 1


@pytest.mark.parametrize("granularity", [PerToken(), PerGroup(4)])
def test_dynamic_dualscale_equals_static_with_per_block_pair(granularity):
    x = torch.randn(3, 8)
    x = torch.where(x < 0, x * 0.05, x)
    out = dynamic_fake_quant_dualscale(x, DType.INT8, granularity)
    blocks = x.reshape(3, -1, 8 if isinstance(granularity, PerToken) else 4)
    pos, neg = dualscale_scales(blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True), DType.INT8)
    expected = fake_quant_dualscale(blocks, pos, neg, DType.INT8).reshape(3, 8)
    assert torch.equal(out, expected)
    assert out.dtype == x.dtype and out.shape == x.shape


def test_which_layers_get_dualscale():
    assert uses_dualscale("silu", input_quantized=True)
    assert not uses_dualscale("gelu", input_quantized=False)
    assert not uses_dualscale(None, input_quantized=True)
    assert {"silu", "gelu", "gelu_tanh", "mish", "geglu", "swiglu"} <= set(ACTIVATION_KINDS)
