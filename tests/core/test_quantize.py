"""quantize() end to end on CPU: an MLP and a tiny diffusers SD3 transformer; save/load; the three steps."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from segquant import build_plan, calibrate, convert, load_quantized, quantize, save_quantized
from segquant.errors import BackendUnavailableError, CalibrationError
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.nn.seglinear import SegLinear

W8A8_CHANNEL = {"default": {"weight_quant": {"type": "int8", "granularity": "channel"},
                            "input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False}}}
W4A16 = {"default": {"weight_quant": {"type": "int4", "granularity": "channel"}, "input_quant": {"enable": False},
                     "opt": {"type": "default"}}}


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    reference, approx = reference.detach(), approx.detach()
    return float(10 * torch.log10(reference.pow(2).mean() / (approx - reference).pow(2).mean()))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 128), nn.Linear(128, 128), nn.Linear(128, 16)

    def forward(self, x, scale=1.0):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))) * scale


def mlp_and_data():
    torch.manual_seed(0)
    return MLP().eval(), [torch.randn(4, 10, 32) for _ in range(6)]


def test_mlp_w8a8_sqnr_above_floor_and_w4a16_lower_but_bounded():
    model, data = mlp_and_data()
    x = torch.randn(8, 32)
    reference = model(x)
    w8a8 = quantize(copy.deepcopy(model), data, W8A8_CHANNEL)
    w4a16 = quantize(copy.deepcopy(model), data, W4A16)
    assert all(isinstance(m, SegLinear) for m in (w8a8.fc1, w8a8.fc2, w8a8.fc3))
    # Uniform 8-bit quantization of a Gaussian-like signal clipped at ~4 sigma gives ~40 dB per tensor; three
    # layers with two quantized tensors each lose ~8 dB more, so 30 dB leaves a margin for outliers.
    assert sqnr_db(reference, w8a8(x)) > 30
    # 4-bit per-channel weights: ~6 dB per bit less, i.e. ~16-20 dB; bounded below by 12 dB.
    assert 12 < sqnr_db(reference, w4a16(x)) < sqnr_db(reference, w8a8(x))


def test_every_item_of_tuple_and_dict_batches_is_used():
    model, _ = mlp_and_data()
    big = torch.zeros(2, 32)
    big[1] = 50.0  # only the second item has a large range
    for batch in ((big, 1.0), {"x": big, "scale": 1.0}, big):
        plan = build_plan(model, W8A8_CHANNEL)
        stats = calibrate(model, plan, [batch])
        assert float(stats["fc1"].absmax.max()) == 50.0


def test_three_steps_equal_quantize_and_tmp_device():
    model, data = mlp_and_data()
    one_call = quantize(copy.deepcopy(model), data, W8A8_CHANNEL)
    stepwise = copy.deepcopy(model)
    plan = build_plan(stepwise, W8A8_CHANNEL)
    convert(stepwise, plan, calibrate(stepwise, plan, data, tmp_device="cpu"), tmp_device="cpu")
    x = torch.randn(3, 32)
    assert torch.equal(one_call(x), stepwise(x))


def test_disabled_layers_and_errors():
    model, data = mlp_and_data()
    config = {**W8A8_CHANNEL, "fc3": {"enable": False}}
    quantized = quantize(copy.deepcopy(model), data, config)
    assert type(quantized.fc3) is nn.Linear and isinstance(quantized.fc1, SegLinear)
    with pytest.raises(CalibrationError, match="empty"):
        quantize(copy.deepcopy(model), [], W8A8_CHANNEL)
    with pytest.raises(CalibrationError, match="NaN"):
        quantize(copy.deepcopy(model), [torch.full((2, 32), float("nan"))], W8A8_CHANNEL)
    with pytest.raises(BackendUnavailableError, match="real_quant"):
        quantize(copy.deepcopy(model), data, {"default": {"real_quant": True}})


def test_calibration_inputs_are_not_modified():
    model, data = mlp_and_data()
    before = [d.clone() for d in data]
    quantize(model, data, "w8a8")
    assert all(torch.equal(a, b) for a, b in zip(before, data))


def sd3_setup():
    model = build_tiny_denoiser("sd3")
    data = [tiny_example_inputs("sd3", batch=2, seed=seed) for seed in range(4)]
    return model, data


def sd3_output(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def test_tiny_sd3_w8a8_and_w4a16():
    model, data = sd3_setup()
    test_input = tiny_example_inputs("sd3", batch=2, seed=99)
    reference = sd3_output(model, test_input)
    w8a8 = quantize(copy.deepcopy(model), data, W8A8_CHANNEL)
    w4a16 = quantize(copy.deepcopy(model), data, W4A16)
    # Several transformer blocks with ~14 quantized linears each: errors add up, 25 dB is the floor.
    assert sqnr_db(reference, sd3_output(w8a8, test_input)) > 25
    assert 8 < sqnr_db(reference, sd3_output(w4a16, test_input)) < sqnr_db(reference, sd3_output(w8a8, test_input))


@pytest.mark.parametrize("preset", ["w8a8", "w4a8", "rtn_w8a8"])
def test_save_load_round_trip_is_bitwise(preset, tmp_path):
    model, data = sd3_setup()
    quantized = quantize(copy.deepcopy(model), data, preset)
    save_quantized(quantized, tmp_path / "q")
    skeleton = build_tiny_denoiser("sd3", seed=123)  # different weights: everything must come from the files
    restored = load_quantized(skeleton, tmp_path / "q")
    test_input = tiny_example_inputs("sd3", batch=2, seed=7)
    assert torch.equal(sd3_output(quantized, test_input), sd3_output(restored, test_input))
    assert restored.segquant_plan.table() == quantized.segquant_plan.table()


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="segquant_plan.json|model.safetensors"):
        load_quantized(MLP(), tmp_path)
    model, data = mlp_and_data()
    save_quantized(quantize(model, data, W8A8_CHANNEL), tmp_path / "mlp")
    with pytest.raises(ValueError, match="wrong architecture"):
        load_quantized(nn.Sequential(nn.Linear(32, 128)), tmp_path / "mlp")


def test_import_segquant_is_cheap():
    code = ("import sys, segquant; segquant.QuantConfig; segquant.SegPattern;"
            "bad = [m for m in ('diffusers', 'triton', 'transformers', 'matplotlib') if m in sys.modules];"
            "assert not bad, bad; import torch; assert not torch.cuda.is_initialized()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_verbose_reports_rtn_and_final_error_per_layer(caplog):
    model, data = mlp_and_data()
    with caplog.at_level("INFO", logger="segquant"):
        quantized = quantize(copy.deepcopy(model), data, "w8a8", verbose=True)
    for layer in quantized.segquant_plan.enabled_layers():
        assert 0 < layer.chosen["error"] < 0.1 and 0 < layer.chosen["rtn_error"] < 0.1
        assert layer.chosen["alpha"] == [0.5]
    assert "rel.err rtn" in caplog.text and "fc2" in caplog.text
