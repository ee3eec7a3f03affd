"""The plan: JSON round trip, user overrides before conversion, group-size fallback notes, unmatched rules."""

import copy
import logging

import torch

from segquant import build_plan, calibrate, convert, quantize
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.nn.seglinear import SegLinear
from segquant.plan import QuantPlan


def sd3():
    return build_tiny_denoiser("sd3"), [tiny_example_inputs("sd3", batch=2, seed=s) for s in range(2)]


def test_plan_json_round_trip_keeps_everything(tmp_path):
    model, data = sd3()
    plan = build_plan(model, "w4a8", data[0])
    plan.save_json(tmp_path / "plan.json")
    again = QuantPlan.load_json(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()
    assert again.table() == plan.table()
    assert again.layers["norm_out.linear"].spec() == plan.layers["norm_out.linear"].spec()


def test_user_overrides_are_used_by_convert():
    model, data = sd3()
    plan = build_plan(model, "w8a8", data[0])
    plan.override("proj_out", enable=False)
    plan.override("context_embedder", weight_quant={"type": "int4"}, opt={"type": "default"})
    convert(model, plan, calibrate(model, plan, data))
    assert type(model.proj_out) is torch.nn.Linear
    assert isinstance(model.context_embedder, SegLinear)
    assert model.context_embedder.spec.weight_dtype.value == "int4" and model.context_embedder.smooth is None


def test_group_size_that_does_not_divide_segments_falls_back_with_a_note():
    model, data = sd3()
    plan = build_plan(model, {"default": {"weight_quant": {"type": "int4", "granularity": "group",
                                                           "group_size": 16}}}, data[0])
    head_merge = plan.layers["transformer_blocks.0.attn.to_out.0"]
    assert head_merge.input_segments == (8, 8)
    assert head_merge.config.weight_quant.granularity.name == "channel"
    assert "does not divide" in head_merge.notes[0]
    assert plan.layers["transformer_blocks.0.ff.net.2"].weight_group_size() == 16


def test_rule_matching_no_layer_is_reported(caplog):
    model, data = sd3()
    with caplog.at_level(logging.WARNING, logger="segquant"):
        build_plan(model, {"default": {}, "no_such_layer.*": {"enable": False}}, data[0])
    assert "'no_such_layer.*' matches no linear layer" in caplog.text


def test_capture_failure_warns_and_quantizes_without_segments(caplog):
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
                return self.linear(x).chunk(2, dim=-1)[0]
            return self.linear(x)

    data = [torch.randn(4, 8).abs()]
    with caplog.at_level(logging.WARNING, logger="segquant"):
        quantized = quantize(copy.deepcopy(Branchy()), data, "w8a8")
    assert "Branchy" in caplog.text
    assert isinstance(quantized.linear, SegLinear) and quantized.segquant_plan.graph_captured is False
