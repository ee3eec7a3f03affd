"""DualScale and output segments reduce quantization error where the method says they should (W8A8 static)."""

import copy

import torch
from torch import nn

from segquant import quantize
from segquant.enums import SegPattern

W8A8_TENSOR = {"input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False},
               "weight_quant": {"type": "int8", "granularity": "tensor"}, "opt": {"type": "default"}}


def config(patterns):
    return {"default": {**W8A8_TENSOR, "search_patterns": [p.value for p in patterns]}}


class FeedForward(nn.Module):
    """up -> GELU -> down: the down projection sees GELU outputs (negative side in [-0.17, 0])."""

    def __init__(self):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 32)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


class AdaLNModulation(nn.Module):
    """SiLU(emb) -> linear -> chunk(3): shift / scale / gate with very different ranges."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3 * 32)
        with torch.no_grad():
            self.linear.weight[:32] *= 0.01   # shift: tiny values
            self.linear.weight[64:] *= 20.0   # gate: large values
            self.linear.bias.zero_()

    def forward(self, emb):
        shift, scale, gate = self.linear(torch.nn.functional.silu(emb)).chunk(3, dim=-1)
        return shift, scale, gate


def layer_error(model, quantized, x, name):
    captured = {}
    for tag, m in (("ref", model), ("q", quantized)):
        handle = m.get_submodule(name).register_forward_hook(lambda _m, _a, out, tag=tag: captured.__setitem__(tag, out))
        with torch.no_grad():
            m(x)
        handle.remove()
    return captured["ref"], captured["q"]


def test_dualscale_reduces_error_on_gelu_outputs():
    torch.manual_seed(0)
    model = FeedForward().eval()
    with torch.no_grad():  # a trained-like layer: pre-activations spread over a wide positive range
        model.up.weight.mul_(3.0)
    data = [torch.randn(16, 32) for _ in range(8)]
    x = torch.randn(64, 32)
    single = quantize(copy.deepcopy(model), data, config([]), example=data[0])
    dual = quantize(copy.deepcopy(model), data, config([SegPattern.ACTIVATION2LINEAR]), example=data[0])
    assert dual.segquant_plan.layers["down"].dual_scale_activation == "gelu"
    assert single.segquant_plan.layers["down"].dual_scale_activation is None
    ref, y_single = layer_error(model, single, x, "down")
    _, y_dual = layer_error(model, dual, x, "down")
    assert (y_dual - ref).pow(2).mean() < 0.8 * (y_single - ref).pow(2).mean()


def test_output_segments_reduce_error_of_adaln_chunks():
    torch.manual_seed(0)
    model = AdaLNModulation().eval()
    data = [torch.randn(4, 16) for _ in range(8)]
    x = torch.randn(32, 16)
    plain = quantize(copy.deepcopy(model), data, config([]), example=data[0])
    segmented = quantize(copy.deepcopy(model), data, config([SegPattern.LINEAR2CHUNK]), example=data[0])
    assert segmented.segquant_plan.layers["linear"].output_segments == (32, 32, 32)
    with torch.no_grad():
        ref, y_plain, y_seg = model(x), plain(x), segmented(x)

    def relative_errors(outputs):
        return [float((o - r).norm() / r.norm()) for o, r in zip(outputs, ref)]

    plain_errors, seg_errors = relative_errors(y_plain), relative_errors(y_seg)
    # The small-range chunk (shift) is crushed by one per-tensor scale; its own scale recovers it.
    assert seg_errors[0] < 0.1 * plain_errors[0]
    assert max(seg_errors) < max(plain_errors)
