"""The algorithms inside quantize(): clipping calibrators, GPTQ with groups, SVD branch, CPU-stored Hessians."""

import copy

import pytest
import torch
from torch import nn

from segquant import quantize


class Layer(nn.Module):
    def __init__(self, k=64, n=48):
        super().__init__()
        self.linear = nn.Linear(k, n)

    def forward(self, x):
        return self.linear(x)


def output_mse(model, quantized, x):
    with torch.no_grad():
        return float((model(x) - quantized(x)).pow(2).mean())


def config(**default):
    base = {"seglinear": False, "opt": {"type": "default"}, "calib": {"type": "amax"},
            "input_quant": {"type": "int8", "granularity": "tensor"},
            "weight_quant": {"type": "int8", "granularity": "channel"}}
    for key, value in default.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return {"default": base}


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_activation_clipping_beats_amax_on_heavy_tailed_inputs(method):
    torch.manual_seed(0)
    model = Layer().eval()
    heavy = torch.distributions.StudentT(3.0)
    data = [heavy.sample((64, 64)) for _ in range(8)]
    x = heavy.sample((256, 64))
    a4 = {"type": "int4", "granularity": "tensor"}
    amax = quantize(copy.deepcopy(model), data, config(input_quant=a4))
    clipped = quantize(copy.deepcopy(model), data, config(input_quant=a4, calib={"type": method, "percentile": 99.9}))
    assert output_mse(model, clipped, x) < 0.5 * output_mse(model, amax, x)


@pytest.mark.parametrize("groupsize", [16, 32])
@pytest.mark.parametrize("cpu_storage", [False, True])
def test_gptq_beats_rtn_with_correlated_inputs(groupsize, cpu_storage):
    torch.manual_seed(0)
    model = Layer().eval()
    mix = torch.randn(64, 64) / 8 + torch.eye(64)
    data = [torch.randn(128, 64) @ mix for _ in range(8)]
    x = torch.randn(256, 64) @ mix
    w4 = {"type": "int4", "granularity": "group", "group_size": groupsize}
    rtn = quantize(copy.deepcopy(model), data, config(weight_quant=w4, input_quant={"enable": False}))
    gptq = quantize(copy.deepcopy(model), data, config(weight_quant=w4, input_quant={"enable": False},
                                                       calib={"type": "gptq", "cpu_storage": cpu_storage}))
    assert gptq.linear.weight_scale.shape == (48, 64 // groupsize)
    assert output_mse(model, gptq, x) < 0.9 * output_mse(model, rtn, x)


def test_svd_branch_absorbs_a_low_rank_outlier_component():
    torch.manual_seed(0)
    model = Layer().eval()
    with torch.no_grad():
        model.linear.weight += 5 * torch.randn(48, 2) @ torch.randn(2, 64)
    data = [torch.randn(32, 64) for _ in range(4)]
    w4 = {"type": "int4", "granularity": "channel"}
    plain = quantize(copy.deepcopy(model), data, config(weight_quant=w4))
    svd = quantize(copy.deepcopy(model), data, config(weight_quant=w4, opt={"type": "svd", "low_rank": 4}))
    assert svd.linear.lowrank_up.shape == (48, 4) and svd.linear.lowrank_up.dtype == torch.float16
    x = torch.randn(128, 64)
    assert output_mse(model, svd, x) < 0.3 * output_mse(model, plain, x)
