"""Checkpoint integrity: SHA-256 manifest, and a named error naming the file for every damaged,
truncated or missing file of a saved quantized model."""

import json
import struct

import pytest
import torch
from torch import nn

from segquant import load_quantized, quantize, save_quantized
from segquant.errors import CheckpointMismatchError, CorruptCheckpointError, MissingCheckpointFileError
from segquant.nn.seglinear import SegLinear
from segquant.serialization import MANIFEST_NAME, PLAN_NAME, WEIGHTS_NAME

CONFIG = {"default": {"weight_quant": {"type": "int8", "granularity": "channel"},
                      "input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False}}}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, quantized model, test input) of a small quantized MLP saved with save_quantized."""
    data = [torch.randn(4, 16) for _ in range(3)]
    quantized = quantize(make_model(), data, CONFIG)
    folder = save_quantized(quantized, tmp_path_factory.mktemp("ckpt") / "q")
    return folder, quantized, torch.randn(5, 16)


def copy_of(saved, tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    for file in saved[0].iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def tensor_data_offset(file, name):
    """Absolute byte offset of the first data byte of tensor ``name`` in a safetensors file."""
    blob = file.read_bytes()
    header_len = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + header_len])
    return 8 + header_len + header[name]["data_offsets"][0]


def test_manifest_holds_the_sha256_of_weights_and_plan(saved):
    import hashlib

    manifest = json.loads((saved[0] / MANIFEST_NAME).read_text())
    for name in (WEIGHTS_NAME, PLAN_NAME):
        assert manifest["sha256"][name] == hashlib.sha256((saved[0] / name).read_bytes()).hexdigest()
    restored = load_quantized(make_model(), saved[0])
    assert torch.equal(restored(saved[2]), saved[1](saved[2]))


def test_flipped_byte_in_tensor_data_is_detected_and_verify_false_loads_it(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    weights = folder / WEIGHTS_NAME
    blob = bytearray(weights.read_bytes())
    blob[tensor_data_offset(weights, "0.weight_codes") + 3] ^= 0x40
    weights.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="model.safetensors.*SHA-256.*verify=False"):
        load_quantized(make_model(), folder)
    loaded = load_quantized(make_model(), folder, verify=False)
    assert not torch.equal(loaded(saved[2]), saved[1](saved[2]))  # the flip reached the data


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_damaged_safetensors_raises_naming_the_file(saved, tmp_path, damage):
    from safetensors import SafetensorError

    folder = copy_of(saved, tmp_path)
    weights = folder / WEIGHTS_NAME
    blob = weights.read_bytes()
    weights.write_bytes(blob[:len(blob) // 2] if damage == "truncate" else blob[:8] + b"\xff" * 16 + blob[24:])
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        load_quantized(make_model(), folder)  # checksum
    with pytest.raises(CorruptCheckpointError, match="model.safetensors.*not a readable safetensors") as info:
        load_quantized(make_model(), folder, verify=False)
    assert isinstance(info.value.__cause__, SafetensorError)


def test_truncated_or_foreign_plan_raises_naming_the_file(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    plan = folder / PLAN_NAME
    text = plan.read_text()
    plan.write_text(text[:len(text) // 2])
    with pytest.raises(CorruptCheckpointError, match="segquant_plan.json.*SHA-256"):
        load_quantized(make_model(), folder)
    with pytest.raises(CorruptCheckpointError, match=r"segquant_plan.json.*not valid JSON \(line") as info:
        load_quantized(make_model(), folder, verify=False)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    plan.write_text('{"layers": 3}')
    with pytest.raises(CorruptCheckpointError, match="segquant_plan.json.*not a valid segquant plan"):
        load_quantized(make_model(), folder, verify=False)


@pytest.mark.parametrize("missing", [WEIGHTS_NAME, PLAN_NAME, MANIFEST_NAME])
def test_missing_file_raises_naming_it(saved, tmp_path, missing):
    folder = copy_of(saved, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(MissingCheckpointFileError, match=missing):
        load_quantized(make_model(), folder)
    assert issubclass(MissingCheckpointFileError, FileNotFoundError)
    if missing == MANIFEST_NAME:  # a folder without checksums still loads when asked to
        restored = load_quantized(make_model(), folder, verify=False)
        assert torch.equal(restored(saved[2]), saved[1](saved[2]))


def test_damaged_manifest_raises_naming_it(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / MANIFEST_NAME).write_text('{"format": "segquant-checkpoint/1"}')
    with pytest.raises(CorruptCheckpointError, match=f"{MANIFEST_NAME}.*sha256"):
        load_quantized(make_model(), folder)


def test_tensors_that_do_not_fit_the_model_raise_mismatch(saved):
    class Wider(nn.Sequential):
        pass

    model = Wider(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.LayerNorm(8))
    with pytest.raises(CheckpointMismatchError, match="model.safetensors.*do not fit"):
        load_quantized(model, saved[0])


def test_backend_is_applied_after_loading(saved):
    pytest.importorskip("segquant.kernels.backend")
    restored = load_quantized(make_model(), saved[0], backend="emulated")
    assert all(m.backend_name == "emulated" for m in restored.modules() if isinstance(m, SegLinear))
    from segquant.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="no_such_backend"):
        load_quantized(make_model(), saved[0], backend="no_such_backend")



@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of the gpu backend on a machine without one")
def test_layer_configured_backend_is_applied_on_load(saved, tmp_path):
    pytest.importorskip("segquant.kernels.backend")
    from segquant.errors import BackendUnavailableError

    folder = copy_of(saved, tmp_path)
    plan = json.loads((folder / PLAN_NAME).read_text())
    plan["layers"][0]["config"]["backend"] = "gpu"
    (folder / PLAN_NAME).write_text(json.dumps(plan))
    with pytest.raises(BackendUnavailableError, match="gpu"):
        load_quantized(make_model(), folder, verify=False)


def test_load_calls_set_backend_for_the_requested_or_configured_backend(saved, tmp_path, monkeypatch):
    """The wiring to set_backend: the requested backend for every layer, else each layer's configured one.

    The backend check is stubbed so that 'gpu' can be asked for on a machine without CUDA.
    """
    calls = []
    monkeypatch.setattr("segquant.conversion.set_backend",
                        lambda model, name, layers=None: calls.append((name, tuple(layers))))
    monkeypatch.setattr("segquant.serialization.check_backends", lambda *args, **kwargs: None)
    layer_names = tuple(layer["name"] for layer in json.loads((saved[0] / PLAN_NAME).read_text())["layers"]
                        if layer.get("enabled", True))
    load_quantized(make_model(), saved[0])
    assert calls == [("emulated", layer_names)]
    calls.clear()
    load_quantized(make_model(), saved[0], backend="gpu")
    assert calls == [("gpu", layer_names)]
    folder = copy_of(saved, tmp_path)
    plan = json.loads((folder / PLAN_NAME).read_text())
    plan["layers"][1]["config"]["backend"] = "gpu"
    (folder / PLAN_NAME).write_text(json.dumps(plan))
    calls.clear()
    load_quantized(make_model(), folder, verify=False)
    gpu_layer = plan["layers"][1]["name"]
    assert calls == [("emulated", tuple(n for n in layer_names if n != gpu_layer)), ("gpu", (gpu_layer,))]
