"""Every preset end to end on tiny SD3 / FLUX / UNet; SegQuant W8A8 vs plain RTN; sequential calibration."""

import copy

import pytest
import torch
from torch import nn

from segquant import PRESETS, build_plan, preset_dict, quantize
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.sequential import block_of

MODELS = ("sd3", "flux", "unet")


def with_text_outliers(inputs):
    """T5/CLIP-like text embeddings: a few channels are consistently ~30x larger than the rest."""
    inputs = dict(inputs)
    text = inputs["encoder_hidden_states"].clone()
    text[..., :3] *= 30
    inputs["encoder_hidden_states"] = text
    return inputs


def sqnr_db(model, quantized, inputs):
    with torch.no_grad():
        ref, out = model(**inputs)[0], quantized(**inputs)[0]
    return float(10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean()))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_runs_end_to_end(name, preset):
    model = build_tiny_denoiser(name)
    data = [tiny_example_inputs(name, batch=2, seed=s) for s in range(2)]
    quantized = quantize(copy.deepcopy(model), data, preset)
    assert quantized.segquant_plan.enabled_layers()
    # 4-bit activations on random tiny models are the weakest case; everything must stay far above noise.
    assert sqnr_db(model, quantized, tiny_example_inputs(name, batch=2, seed=9)) > 10


@pytest.mark.parametrize("name", MODELS)
def test_segquant_static_w8a8_beats_plain_static_rtn_on_the_calibration_data(name):
    """Static per-tensor scales, where smoothing and segments matter most. (At dynamic per-token
    granularity, w8a8 vs rtn_w8a8, the tiny random models are no evidence either way: on them the two
    are within 1 dB; the demo models measure it, BENCHMARKS.md.)"""
    model = build_tiny_denoiser(name)
    data = [with_text_outliers(tiny_example_inputs(name, batch=4, seed=s)) for s in range(6)]
    segquant = quantize(copy.deepcopy(model), data, "w8a8_original")
    rtn = quantize(copy.deepcopy(model), data, "rtn_w8a8_static")
    for batch in data[:2]:
        assert sqnr_db(model, segquant, batch) > sqnr_db(model, rtn, batch)


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])

    def forward(self, x):
        return self.blocks[1](torch.relu(self.blocks[0](x)))


def test_sequential_calibration_sees_quantized_predecessors():
    torch.manual_seed(0)
    model = TwoLayers().eval()
    data = [torch.randn(8, 16) for _ in range(4)]
    config = preset_dict("rtn_w4a8")
    config["default"]["weight_quant"] = {"type": "int4", "granularity": "tensor"}
    plain = quantize(copy.deepcopy(model), data, config)
    config["default"]["calib"]["sequential"] = True
    sequential = quantize(copy.deepcopy(model), data, config)
    assert torch.equal(plain.blocks[0].input_scale, sequential.blocks[0].input_scale)
    with torch.no_grad():
        expected = max(float(torch.relu(sequential.blocks[0](x)).abs().max()) for x in data) / 127
        fp_range = max(float(torch.relu(model.blocks[0](x)).abs().max()) for x in data) / 127
    assert float(sequential.blocks[1].input_scale) == pytest.approx(expected, rel=1e-6)
    assert float(plain.blocks[1].input_scale) == pytest.approx(fp_range, rel=1e-6)
    assert expected != pytest.approx(fp_range, rel=1e-6)


def test_block_of_groups_layers_under_numbered_children():
    assert block_of("transformer_blocks.3.attn.to_q") == "transformer_blocks.3"
    assert block_of("down_blocks.1.attentions.0.proj_in") == "down_blocks.1"
    assert block_of("proj_out") == "proj_out"


FP8_PRESET_LAYERS = {  # layer -> (weights, inputs, dynamic inputs) in the w8a8_fp8 preset
    "sd3": {"transformer_blocks.0.attn.to_q": ("int8", "int8", False),
            "transformer_blocks.0.attn.add_v_proj": ("int8", "int8", False),
            "transformer_blocks.0.attn.to_out.0": ("fpe4m3", "fpe4m3", False),
            "transformer_blocks.0.ff.net.2": ("fpe4m3", "fpe4m3", False),
            "transformer_blocks.0.norm1.linear": ("int8", "int8", True),
            "time_text_embed.text_embedder.linear_1": ("int8", "int8", True)},
    "flux": {"single_transformer_blocks.0.attn.to_k": ("int8", "int8", False),
             "single_transformer_blocks.0.proj_mlp": ("fpe4m3", "fpe4m3", False),
             "transformer_blocks.0.attn.to_add_out": ("fpe4m3", "fpe4m3", False),
             "time_text_embed.guidance_embedder.linear_2": ("int8", "int8", True)},
    "unet": {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v": ("int8", "int8", False),
             "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0": ("fpe4m3", "fpe4m3", False),
             "down_blocks.1.resnets.0.time_emb_proj": ("int8", "int8", True)},
}


@pytest.mark.parametrize("name", MODELS)
def test_fp8_preset_runs_attention_projections_and_conditioning_in_int8(name):
    """``w8a8_fp8``: q / k / v in INT8 with static inputs, the conditioning linears in INT8 dynamic per-token, the
    other linears in FP8 (BENCHMARKS.md "Where FP8's gap comes from")."""
    model = build_tiny_denoiser(name)
    plan = build_plan(model, "w8a8_fp8", example=tiny_example_inputs(name, batch=2, seed=0))
    for layer, expected in FP8_PRESET_LAYERS[name].items():
        spec = plan.layers[layer].spec()
        assert (spec.weight_dtype.value, spec.input_dtype.value, spec.input_dynamic) == expected, layer


def test_fp8_preset_keeps_fused_qkv_in_int8():
    """With ``fuse_projections`` the rule also names diffusers' fused ``to_qkv`` / ``to_added_qkv``."""
    model = build_tiny_denoiser("flux")
    data = [tiny_example_inputs("flux", batch=2, seed=s) for s in range(2)]
    quantized = quantize(model, data, {**preset_dict("w8a8_fp8"), "fuse_projections": True})
    fused = {name: layer.spec() for name, layer in quantized.segquant_plan.layers.items()
             if name.endswith(("to_qkv", "to_added_qkv"))}
    assert fused and all((spec.weight_dtype.value, spec.input_dtype.value) == ("int8", "int8")
                         for spec in fused.values())
