"""Deployable checkpoints: load_quantized(folder) without a model, format versions, old int4 checkpoints,
and named errors that leave the user's model untouched."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from segquant import load_quantized, quantize, save_quantized
from segquant.errors import (CheckpointMismatchError, CheckpointVersionError, CorruptCheckpointError,
                             MissingCheckpointFileError)
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.nn.seglinear import SegLinear
from segquant.numerics import unpack_int4
from segquant.serialization import FORMAT_VERSION, MANIFEST_NAME, MODEL_NAME, WEIGHTS_NAME
from tests.core.test_serialization import copy_of

W4A8 = {"default": {"weight_quant": {"type": "int4", "granularity": "group", "group_size": 16},
                    "input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False},
                    "opt": {"type": "default"}}}


def output(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, quantized tiny SD3 at W4A8, test input)."""
    model = build_tiny_denoiser("sd3")
    data = [tiny_example_inputs("sd3", batch=2, seed=s) for s in range(2)]
    quantized = quantize(model, data, W4A8)
    folder = save_quantized(quantized, tmp_path_factory.mktemp("ckpt") / "q")
    return folder, quantized, tiny_example_inputs("sd3", batch=2, seed=5)


def test_load_without_a_model_is_bitwise_and_packed(saved):
    from diffusers import SD3Transformer2DModel

    folder, quantized, x = saved
    restored = load_quantized(folder)
    assert type(restored) is SD3Transformer2DModel
    assert not any(t.is_meta for t in restored.state_dict().values())
    layers = [m for m in restored.modules() if isinstance(m, SegLinear)]
    assert layers and all(m.weight_codes.dtype == torch.uint8 for m in layers)
    assert all(m.weight_codes.shape[1] == (m.in_features + 1) // 2 for m in layers)
    assert torch.equal(output(restored, x), output(quantized, x))
    assert restored.segquant_plan.table() == quantized.segquant_plan.table()


def test_model_description_holds_the_diffusers_class_and_config(saved):
    description = json.loads((saved[0] / MODEL_NAME).read_text())
    assert description["class"] == "SD3Transformer2DModel" and description["format_version"] == FORMAT_VERSION
    assert description["config"]["num_layers"] == saved[1].config.num_layers


def test_newer_format_version_is_a_named_error(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointVersionError, match="version 99.*upgrade segquant"):
        load_quantized(folder)


def test_missing_model_description_is_a_named_error(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / MODEL_NAME).unlink()
    with pytest.raises(MissingCheckpointFileError, match=MODEL_NAME):
        load_quantized(folder)


def test_corrupt_model_description_is_a_named_error(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    (folder / MODEL_NAME).write_text("{")
    with pytest.raises(CorruptCheckpointError, match=MODEL_NAME):
        load_quantized(folder)
    with pytest.raises(CorruptCheckpointError, match=MODEL_NAME):
        load_quantized(folder, verify=False)


def test_mismatched_architecture_leaves_the_users_model_untouched(saved):
    other = build_tiny_denoiser("flux")
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointMismatchError, match="wrong architecture"):
        load_quantized(other, saved[0])
    assert not any(isinstance(m, SegLinear) for m in other.modules())
    after = other.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_same_layers_but_other_shapes_elsewhere_leaves_the_model_untouched(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    name = next(k for k in tensors if "norm" in k and k.endswith("weight"))
    tensors[name] = torch.cat([tensors[name], tensors[name]])
    save_file(tensors, str(folder / WEIGHTS_NAME))
    skeleton = build_tiny_denoiser("sd3", seed=3)
    before = copy.deepcopy(skeleton.state_dict())
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_quantized(skeleton, folder, verify=False)
    assert not any(isinstance(m, SegLinear) for m in skeleton.modules())
    assert all(torch.equal(before[k], v) for k, v in skeleton.state_dict().items())


def test_format_1_checkpoint_with_int8_held_int4_codes_loads(saved, tmp_path):
    """A folder of format 1: no model description, no version, int4 codes unpacked in int8 (N, K)."""
    folder = copy_of(saved, tmp_path)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    plan = saved[1].segquant_plan
    for layer in plan.enabled_layers():
        key = f"{layer.name}.weight_codes"
        tensors[key] = unpack_int4(tensors[key], layer.in_features)
    save_file(tensors, str(folder / WEIGHTS_NAME))
    (folder / MODEL_NAME).unlink()
    (folder / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointMismatchError, match="pass the unquantized model"):
        load_quantized(folder, verify=False)
    restored = load_quantized(build_tiny_denoiser("sd3", seed=1), folder, verify=False)
    assert torch.equal(output(restored, saved[2]), output(saved[1], saved[2]))


def test_loaded_model_drops_into_a_pipeline_slot(saved):
    from diffusers import StableDiffusion3Pipeline

    restored = load_quantized(saved[0])
    pipe = StableDiffusion3Pipeline(transformer=None, scheduler=None, vae=None, text_encoder=None,
                                    tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.transformer = restored
    assert pipe.transformer is restored


def test_cli_takes_a_quantized_folder_where_a_model_is_expected(saved, capsys):
    from segquant.cli import load_denoiser, main

    model, example = load_denoiser(str(saved[0]))
    assert isinstance(model.transformer_blocks[0].attn.to_q, SegLinear)
    assert output(model, example).shape == output(saved[1], example).shape
    assert main(["inspect", str(saved[0])]) == 0
    assert saved[1].segquant_plan.table() in capsys.readouterr().out


def _as_format_2(folder, scales) -> None:
    """Rewrite a two-level folder as format 2 held it: float32 group scales ``scales(base, steps)``, the
    low-rank ``D_s`` without ``1/λ_s``."""
    tensors = load_file(str(folder / WEIGHTS_NAME))
    for key in [k for k in tensors if k.endswith(".lowrank_down")]:
        smooth = tensors[key.replace(".lowrank_down", ".smooth")]
        tensors[key] = (tensors[key].float() * smooth[:, None, :]).to(tensors[key].dtype)
    for key in [k for k in tensors if k.endswith(".weight_steps")]:
        layer = key[: -len(".weight_steps")]
        tensors[f"{layer}.weight_scale"] = scales(tensors[f"{layer}.weight_scale"], tensors.pop(key).float())
    save_file(tensors, str(folder / WEIGHTS_NAME))
    description = json.loads((folder / MODEL_NAME).read_text())
    (folder / MODEL_NAME).write_text(json.dumps({**description, "format_version": 2}))


@pytest.fixture(scope="module")
def saved_two_level(tmp_path_factory):
    """(folder, tiny SD3 quantized at W4A8 with two-level scales and a rank-4 branch, test input)."""
    config = copy.deepcopy(W4A8)
    config["default"]["weight_quant"]["two_level"] = True
    config["default"]["opt"] = {"type": "svd", "alpha": 0.5, "low_rank": 4}
    quantized = quantize(build_tiny_denoiser("sd3"), [tiny_example_inputs("sd3", batch=2, seed=0)], config)
    folder = save_quantized(quantized, tmp_path_factory.mktemp("ckpt2") / "q")
    return folder, quantized, tiny_example_inputs("sd3", batch=2, seed=5)


def test_two_level_scales_are_saved_as_steps_and_row_bases(saved_two_level):
    folder, quantized, x = saved_two_level
    tensors = load_file(str(folder / WEIGHTS_NAME))
    layers = [(n, m) for n, m in quantized.named_modules() if isinstance(m, SegLinear) and m.spec.weight_two_level]
    assert layers and all(m.weight_steps is not None for _, m in layers)
    for name, module in layers:
        steps, base = tensors[f"{name}.weight_steps"], tensors[f"{name}.weight_scale"]
        assert steps.dtype == torch.uint8 and 1 <= int(steps.min()) and int(steps.max()) <= 16
        assert base.shape == (module.out_features, 1)
    assert torch.equal(output(load_quantized(folder), x), output(quantized, x))


def test_format_2_checkpoint_is_converted_on_load(saved_two_level, tmp_path):
    folder, quantized, x = saved_two_level
    old = copy_of(saved_two_level, tmp_path)
    _as_format_2(old, lambda base, steps: base * steps)
    restored = load_quantized(old, verify=False)
    assert any(m.lowrank_down is not None for m in restored.modules() if isinstance(m, SegLinear))
    y, reference = output(restored, x), output(quantized, x)  # D rounded to 16 bits twice on the way
    assert ((y - reference).norm() / reference.norm()).item() < 5e-3  # unfolded D: O(1)
    (tmp_path / "broken").mkdir()
    broken = copy_of(saved_two_level, tmp_path / "broken")
    _as_format_2(broken, lambda base, steps: base * (steps + torch.rand_like(steps)))  # not integer steps
    with pytest.raises(CorruptCheckpointError, match="two-level"):
        load_quantized(broken, verify=False)
