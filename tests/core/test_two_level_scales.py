"""Two-level INT4 group scales (``weight_quant.two_level``): integer multiples 1..16 of one scale per row."""

import pytest
import torch
from torch import nn

from segquant import quantize
from segquant.nn.seglinear import SegLinear
from segquant.numerics import TWO_LEVEL_STEPS, two_level_amax, two_level_split


def test_snapped_clip_values_never_clip_more_and_are_integer_steps():
    amax = torch.rand(6, 12, generator=torch.Generator().manual_seed(0)) + 1e-3
    amax[1] = 0  # an all-zero row
    row = amax.amax(dim=1, keepdim=True)
    snapped = two_level_amax(amax, row)
    assert (snapped >= amax).all()
    steps = snapped[0] / (row[0] / TWO_LEVEL_STEPS)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-4)
    assert steps.max().round() == TWO_LEVEL_STEPS and steps.min() >= 1


def test_split_recovers_the_steps_and_refuses_free_scales():
    base = torch.rand(4, 1, generator=torch.Generator().manual_seed(1)) * 1e-2
    steps = torch.randint(1, 9, (4, 10), generator=torch.Generator().manual_seed(2)) * 2  # all even: 2..16
    multiplier, found = two_level_split(base * steps)
    torch.testing.assert_close(found * multiplier.float(), base * steps)
    assert multiplier.dtype == torch.uint8 and int(multiplier.max()) <= TWO_LEVEL_STEPS
    assert two_level_split(torch.rand(4, 10, generator=torch.Generator().manual_seed(3)) + 0.1) is None


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64))


@pytest.mark.parametrize("calib", ["amax", "gptq"])
def test_quantized_int4_layers_have_two_level_scales(calib):
    config = {"default": {"calib": {"type": calib}, "input_quant": {"type": "int8"},
                          "weight_quant": {"type": "int4", "granularity": "group", "group_size": 32,
                                           "two_level": True}}}
    batches = [torch.randn(16, 128) for _ in range(2)]
    free = quantize(_model(), batches, {"default": {**config["default"], "weight_quant": {
        **config["default"]["weight_quant"], "two_level": False}}})
    model = quantize(_model(), batches, config)
    layers = [m for m in model.modules() if isinstance(m, SegLinear)]
    assert len(layers) == 2 and all(m.weight_scale.shape == (m.out_features, 1) for m in layers)
    assert all(int(m.weight_steps.min()) >= 1 and int(m.weight_steps.max()) == TWO_LEVEL_STEPS for m in layers)
    assert any(two_level_split(m.weight_scale) is None for m in free.modules() if isinstance(m, SegLinear))
    x = torch.randn(8, 128)
    reference = _model()(x)
    for quantized in (model, free):  # both are close to the float model; two-level costs a little accuracy
        assert ((quantized(x) - reference).norm() / reference.norm()).item() < 0.2


def test_two_level_has_no_effect_outside_int4_groups():
    config = {"default": {"weight_quant": {"type": "int8", "granularity": "group", "group_size": 32,
                                           "two_level": True}}}
    model = quantize(_model(), [torch.randn(16, 128)], config)
    layers = [m for m in model.modules() if isinstance(m, SegLinear)]
    assert all(m.weight_steps is None for m in layers)
    assert any(two_level_split(m.weight_scale) is None for m in layers)
