"""Named errors and warnings instead of silent or raw failures (issue 10, items in quantize/plan/calibrate)."""

import copy
import logging

import pytest
import torch
from torch import nn

from segquant import build_plan, calibrate, convert, load_quantized, quantize, save_quantized
from segquant.errors import AlreadyQuantizedError, CalibrationError, ConfigError, UnknownLayerError
from segquant.nn.seglinear import SegLinear


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.SiLU(), nn.Linear(6, 4)).eval()


def data(n=3, rows=5):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(rows, 8, generator=g) for _ in range(n)]


def test_quantizing_twice_is_refused_and_the_model_stays_saveable(tmp_path):
    model = quantize(tiny_model(), data(), "w8a8")
    x = data(1)[0]
    before = model(x)
    with pytest.raises(AlreadyQuantizedError, match=r"already quantized \(2 SegLinear layers, e\.g\. '0'\)"):
        quantize(model, data(), "w8a8")
    assert torch.equal(model(x), before) and model.segquant_plan.enabled_layers()
    save_quantized(model, tmp_path)
    assert torch.equal(load_quantized(tiny_model(), tmp_path)(x), before)


class Narrow(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide, self.narrow, self.tiny = nn.Linear(256, 256), nn.Linear(256, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.tiny(self.narrow(self.wide(x)))


def test_svd_rank_is_capped_on_narrow_layers_and_the_plan_says_so():
    torch.manual_seed(0)
    model = Narrow().eval()
    batches = [torch.randn(32, 256) for _ in range(2)]
    quantized = quantize(copy.deepcopy(model), batches, "w4a8")
    plan = quantized.segquant_plan
    assert plan.layers["wide"].spec().low_rank == 32 and not plan.layers["wide"].notes
    narrow, tiny = plan.layers["narrow"], plan.layers["tiny"]
    assert narrow.spec().low_rank == 4 and "svd rank 32 is too high for a 16x256" in narrow.notes[-1]
    assert "rank 4" in narrow.notes[-1]
    assert tiny.spec().low_rank == 0 and "no SVD branch" in tiny.notes[-1]
    assert "svd(r=4)" in plan.table()
    assert quantized.narrow.lowrank_up.shape == (16, 4) and quantized.tiny.lowrank_up is None
    assert quantized.narrow.weight_codes.abs().sum() > 0  # the residual is really quantized


def test_all_zero_calibration_data_warns_naming_the_layer(caplog):
    model = tiny_model()
    with caplog.at_level(logging.WARNING, logger="segquant"):
        quantize(model, [torch.zeros(5, 8)], "w8a8")
    assert "all zero" in caplog.text and "'0'" not in caplog.text and ": 0" in caplog.text


def test_a_model_without_linear_layers_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="segquant"):
        quantize(nn.Sequential(nn.SiLU()), data(), "w8a8")
    assert "Sequential has no nn.Linear layer" in caplog.text


def test_a_one_shot_generator_loses_no_batch_to_graph_capture():
    from_list = quantize(tiny_model(), data(), "w8a8")
    from_generator = quantize(tiny_model(), (b for b in data()), "w8a8")
    for key, value in from_list.state_dict().items():
        assert torch.equal(value, from_generator.state_dict()[key]), key


def test_sequential_calibration_refuses_a_one_shot_generator():
    config = {"default": {"calib": {"sequential": True}}}
    with pytest.raises(CalibrationError, match="one-shot iterator or generator"):
        quantize(tiny_model(), (b for b in data()), config)


class AddsContext(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 6)

    def forward(self, x, context):
        return self.lin(x) + context


def test_a_batch_of_the_wrong_shape_names_batch_shapes_and_layer():
    model = AddsContext().eval()
    batches = [{"x": torch.randn(5, 8), "context": torch.randn(5, 6)},
               {"x": torch.randn(5, 8), "context": torch.randn(3, 6)}]
    with pytest.raises(CalibrationError) as info:
        quantize(model, batches, "w8a8")
    message = str(info.value)
    for part in ("calibration batch 1", "'context': (3, 6)", "after the quantized layer 'lin' ran",
                 "batch 0 had shapes {'x': (5, 8), 'context': (5, 6)}", "RuntimeError"):
        assert part in message, (part, message)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_batch_with_the_wrong_feature_count_names_the_layer():
    with pytest.raises(CalibrationError, match=r"calibration batch 1: layer '0': input has 7 features, expected 8"):
        quantize(tiny_model(), [torch.randn(5, 8), torch.randn(5, 7)], "w8a8")


def test_override_of_an_unknown_layer_suggests_close_names():
    plan = build_plan(Narrow(), "w8a8")
    with pytest.raises(UnknownLayerError, match=r"no linear layer named 'narow'.*did you mean 'narrow'") as info:
        plan.override("narow", enable=False)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
    assert str(info.value).startswith("plan.override")


def test_three_step_api_gives_a_saveable_model(tmp_path):
    model = tiny_model()
    plan = build_plan(model, "w8a8", example=data(1)[0])
    plan.override("2", enable=False)
    stats = calibrate(model, plan, data())
    convert(model, plan, stats)
    assert model.segquant_plan is plan and isinstance(model[0], SegLinear) and isinstance(model[2], nn.Linear)
    save_quantized(model, tmp_path)
    x = data(1)[0]
    assert torch.equal(load_quantized(tiny_model(), tmp_path)(x), model(x))


class LeftBehind(nn.Module):
    """A layer the forward never calls, as diffusers' fuse_qkv_projections() leaves the separate projections."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("sequential", [False, True])
def test_a_layer_the_forward_never_calls_is_named_before_anything_is_quantized(sequential):
    torch.manual_seed(0)
    model = LeftBehind().eval()
    config = {"default": {"calib": {"type": "amax", "sequential": sequential}}}
    with pytest.raises(CalibrationError, match=r"1 enabled layer\(s\) never ran .*'unused'.*\{'unused': \{'enable': "
                                               r"False\}\}.*Nothing was quantized"):
        quantize(model, data(), config)
    assert not any(isinstance(m, SegLinear) for m in model.modules())
    config["unused"] = {"enable": False}
    quantized = quantize(model, data(), config)
    assert isinstance(quantized.used, SegLinear) and isinstance(quantized.unused, nn.Linear)
