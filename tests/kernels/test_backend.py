"""Backend dispatch: every error path raises BackendUnavailableError naming layer, backend, reason and
alternative; checks run before anything changes; packed tensors move with .to() and are never saved."""

import copy
import types

import pytest
import torch
from seglinear_cases import CASES, random_buffers, random_input
from torch import nn

from segquant import load_quantized, preset_dict, quantize, save_quantized
from segquant.conversion import convert, layer_backend
from segquant.calibration import calibrate
from segquant.config_schema import build_layer_config
from segquant.errors import BackendUnavailableError
from segquant.kernels import backend as registry
from segquant.kernels.backend import Backend, available_backends, get_backend, set_backend
from segquant.nn.seglinear import SegLinear
from segquant.plan import build_plan


class Two(nn.Module):
    def __init__(self, modules):
        super().__init__()
        self.first, self.second = modules

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def seglinear(case_name="plain_odd"):
    case = next(c for c in CASES if c.name == case_name)
    module = SegLinear(case.spec)
    for name, value in random_buffers(case).items():
        if value is not None:
            getattr(module, name).copy_(value)
    return module, random_input(case)


class PackingBackend(Backend):
    """Packs the dequantized weight transposed, as a real kernel would pack its own layout (and, to keep
    it short, runs a weight-only product: no input quantization)."""

    name = "test_packing"

    def pack(self, module):
        module.register_buffer("packed_weight_t", module.dequantized_weight().T.contiguous(), persistent=False)

    def forward(self, module, x):
        return (x.float() @ module.packed_weight_t + module.bias.float()).to(x.dtype)


class RefusingBackend(Backend):
    name = "test_refusing"

    def check(self, module, layer_name):
        if module.in_features % 2:
            raise BackendUnavailableError(layer_name, self.name, f"in_features {module.in_features} is odd",
                                          "use backend 'emulated'")


@pytest.fixture
def test_backends(monkeypatch):
    for cls in (PackingBackend, RefusingBackend):
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)
    monkeypatch.setattr(registry, "_INSTANCES", {})


def assert_names(error, *words):
    for word in words:
        assert word in str(error), (word, str(error))


def test_unknown_backend_names_layer_backend_and_the_known_names():
    model = Two([seglinear()[0], seglinear()[0]])
    with pytest.raises(BackendUnavailableError) as info:
        set_backend(model, "cuda_magic")
    assert_names(info.value, "first", "cuda_magic", "no backend has this name", "emulated", "gpu")
    assert all(m.backend_name == "emulated" for m in (model.first, model.second))
    assert {"emulated", "gpu"} <= set(available_backends())


def test_gpu_backend_on_this_machine_is_a_named_error_never_an_import_error():
    module, _x = seglinear()
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run the GPU backend")
    with pytest.raises(BackendUnavailableError) as info:
        set_backend(nn.Sequential(module), "gpu")
    assert_names(info.value, "'0'", "'gpu'", "emulated")
    assert module.backend_name == "emulated"


def test_missing_backend_module_and_missing_dependency(monkeypatch):
    monkeypatch.setitem(registry._MODULES, "gone", "segquant.kernels.gone_for_this_test")
    monkeypatch.setitem(registry._MODULES, "broken", "broken_backend_module")
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("gone", layer="blocks.0.proj")
    assert_names(info.value, "blocks.0.proj", "'gone'", "no segquant.kernels.gone_for_this_test module", "emulated")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("broken", layer="blocks.1.proj")
    assert_names(info.value, "blocks.1.proj", "'broken'", "segquant_test_missing_dependency", "emulated")


def test_failing_check_changes_nothing(test_backends):
    even, _ = seglinear("in_and_out_segments")  # K = 20
    odd, _ = seglinear("plain_odd")  # K = 17
    model = Two([even, odd])
    with pytest.raises(BackendUnavailableError) as info:
        set_backend(model, "test_refusing")
    assert_names(info.value, "'second'", "test_refusing", "in_features 17 is odd", "emulated")
    assert even.backend_name == odd.backend_name == "emulated"
    assert info.value.layer == "second" and info.value.backend == "test_refusing"


def test_packed_buffers_move_with_to_and_are_never_saved(test_backends):
    module, x = seglinear()
    expected = module(x)
    saved_keys = set(module.state_dict())
    set_backend(module, "test_packing")
    assert module.backend_name == "test_packing" and "packed_weight_t" in dict(module.named_buffers())
    weight_only = nn.functional.linear(x, module.dequantized_weight(), module.bias)
    torch.testing.assert_close(module(x), weight_only, rtol=1e-5, atol=1e-5)
    assert set(module.state_dict()) == saved_keys
    copied = copy.deepcopy(module)
    assert copied.backend_name == "test_packing" and torch.equal(copied(x), module(x))
    doubled = module.to(torch.float64)
    assert doubled.packed_weight_t.dtype == torch.float32  # packed layouts keep their dtype
    on_meta = copy.deepcopy(module).to("meta")
    assert on_meta.packed_weight_t.device.type == "meta" and on_meta.weight_codes.device.type == "meta"
    set_backend(module, "emulated")
    assert "packed_weight_t" not in dict(module.named_buffers())
    assert torch.equal(module(x), expected)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.SiLU(), nn.Linear(6, 4)).eval()


def test_real_quant_layers_ask_for_the_gpu_backend_before_any_work():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run the GPU backend")
    model, data = tiny_model(), [torch.randn(5, 8) for _ in range(2)]
    config = preset_dict("w8a8")
    config["2"] = {"real_quant": True}
    plan = build_plan(model, config, data[0])
    stats = calibrate(model, plan, data)
    with pytest.raises(BackendUnavailableError) as info:
        convert(model, plan, stats)
    assert_names(info.value, "'2'", "'gpu'", "emulated")
    assert not any(isinstance(m, SegLinear) for m in model.modules())  # nothing was converted
    convert(model, plan, stats, backend="emulated")  # an explicit backend wins over the config
    assert isinstance(model[2], SegLinear) and model[2].backend_name == "emulated"


def test_quantize_checks_the_backend_before_calibrating():
    consumed = []

    def loader():
        for _ in range(2):
            consumed.append(1)
            yield torch.randn(5, 8)

    with pytest.raises(BackendUnavailableError, match="no backend has this name"):
        quantize(tiny_model(), loader(), "w8a8", example=torch.randn(5, 8), backend="nope")
    assert consumed == []


def test_quantize_with_a_packing_backend(test_backends):
    data = [torch.randn(5, 8) for _ in range(2)]
    reference = quantize(tiny_model(), data, "w8a8")
    packed = quantize(tiny_model(), data, "w8a8", backend="test_packing")
    assert packed[0].backend_name == "test_packing" and "packed_weight_t" in dict(packed[0].named_buffers())
    assert set(packed.state_dict()) == set(reference.state_dict())
    x = data[0]
    weight_only = nn.functional.linear(x, reference[0].dequantized_weight(), reference[0].bias)
    torch.testing.assert_close(packed[0](x), weight_only, rtol=1e-5, atol=1e-5)


def test_load_puts_layers_on_the_asked_backend(test_backends, tmp_path):
    data = [torch.randn(5, 8) for _ in range(2)]
    save_quantized(quantize(tiny_model(), data, "w8a8"), tmp_path)
    with pytest.raises(BackendUnavailableError, match="'nope'"):
        load_quantized(tiny_model(), tmp_path, backend="nope")
    untouched = tiny_model()
    with pytest.raises(BackendUnavailableError):
        load_quantized(untouched, tmp_path, backend="nope")
    assert not any(isinstance(m, SegLinear) for m in untouched.modules())
    loaded = load_quantized(tiny_model(), tmp_path, backend="test_packing")
    assert loaded[0].backend_name == "test_packing" and "packed_weight_t" in dict(loaded[0].named_buffers())
    assert load_quantized(tiny_model(), tmp_path)[0].backend_name == "emulated"


def test_layer_backend_precedence():
    """The argument wins over the layer's config; ``real_quant: true`` is the config's alias for 'gpu'."""
    def layer(**raw):
        return types.SimpleNamespace(config=build_layer_config(raw))

    assert layer_backend(layer()) == "emulated"
    assert layer_backend(layer(real_quant=True)) == "gpu"
    assert layer_backend(layer(real_quant=False, backend="emulated")) == "emulated"
    assert layer_backend(layer(backend="gpu")) == "gpu"
    assert layer_backend(layer(backend="gpu"), backend="emulated") == "emulated"
