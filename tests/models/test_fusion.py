"""fuse_projections: q / k / v fused into one layer with one smoothing, exact before quantization (up to the GEMM's
summation order), one input scale after it, and checkpoints that rebuild the fused model."""

import pytest
import torch
from torch import nn

from segquant import fuse_projections, load_quantized, preset_dict, quantize, save_quantized
from segquant.errors import CheckpointMismatchError
from segquant.models.fusion import FusedJointAttnProcessor
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.nn.seglinear import SegLinear

MODELS = ("sd3", "flux", "unet", "pixart")


def output(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def linear_names(model):
    return {name for name, module in model.named_modules() if isinstance(module, (nn.Linear, SegLinear))}


@pytest.mark.parametrize("name", MODELS)
def test_fusion_is_exact_and_drops_only_the_replaced_projections(name):
    model, x = build_tiny_denoiser(name), tiny_example_inputs(name, seed=3)
    before, names = output(model, x), linear_names(model)
    rules = fuse_projections(model, tiny_example_inputs(name))
    # exact up to summation order: the wider fused GEMM may block K differently (1-2 ulp on an AVX512 CPU)
    ulps = (output(model, x) - before).abs().max() / (torch.finfo(before.dtype).eps * before.abs().max())
    assert ulps <= 8, f"fused output differs by {ulps:.1f} ulp of the largest output"
    dropped = set(model.segquant_dropped_layers)
    assert dropped and dropped <= names
    assert {n.rpartition(".")[2] for n in dropped} <= {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj",
                                                       "add_v_proj"}
    assert not dropped & linear_names(model)
    assert "*to_qkv" in rules and all(rule == {"search_patterns": []} for rule in rules.values())


def test_sd3_keeps_its_qk_norms_in_both_attentions():
    """diffusers 0.42's fused joint processor drops SD3.5's q / k RMS norms: ours keeps them (the test above checks
    the output), and the image-only second attention is fused too."""
    model = build_tiny_denoiser("sd3")
    fuse_projections(model, tiny_example_inputs("sd3"))
    attentions = [m for n, m in model.named_modules() if n.endswith(("attn", "attn2"))]
    assert any(n.endswith("attn2") for n, _ in model.named_modules())
    assert all(isinstance(m.processor, FusedJointAttnProcessor) and m.to_qkv is not None for m in attentions)
    assert all(m.norm_q is not None for m in attentions)


def test_fused_layers_are_quantized_whole_with_one_smoothing():
    model, data = build_tiny_denoiser("flux"), [tiny_example_inputs("flux", seed=s) for s in range(2)]
    config = {**preset_dict("w8a8_static"), **fuse_projections(model, data[0])}
    quantize(model, data, config)
    fused = {n: m for n, m in model.named_modules() if n.endswith(("to_qkv", "to_added_qkv"))}
    assert fused and all(isinstance(m, SegLinear) for m in fused.values())
    assert all(m.smooth.shape[0] == 1 for m in fused.values())  # one λ for q, k and v
    assert torch.isfinite(output(model, data[0])).all()


def test_checkpoint_of_a_fused_model_rebuilds_it(tmp_path):
    model, data = build_tiny_denoiser("sd3"), [tiny_example_inputs("sd3", seed=s) for s in range(2)]
    config = {**preset_dict("w8a8_static"), **fuse_projections(model, data[0])}
    folder = save_quantized(quantize(model, data, config), tmp_path / "q")
    x = tiny_example_inputs("sd3", seed=7)
    restored = load_quantized(folder)
    assert torch.equal(output(restored, x), output(model, x))
    assert restored.segquant_dropped_layers == model.segquant_dropped_layers
    into_unfused = load_quantized(build_tiny_denoiser("sd3", seed=1), folder)
    assert torch.equal(output(into_unfused, x), output(model, x))


def test_fused_model_does_not_take_an_unfused_checkpoint(tmp_path):
    model, data = build_tiny_denoiser("sd3"), [tiny_example_inputs("sd3", seed=s) for s in range(2)]
    folder = save_quantized(quantize(model, data, "w8a8_static"), tmp_path / "q")
    fused = build_tiny_denoiser("sd3")
    fuse_projections(fused, data[0])
    with pytest.raises(CheckpointMismatchError, match="fused"):
        load_quantized(fused, folder)


def test_refuses_what_it_cannot_fuse():
    with pytest.raises(TypeError, match="fuse_qkv_projections"):
        fuse_projections(nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4))
    model, x = build_tiny_denoiser("flux"), tiny_example_inputs("flux")
    fuse_projections(model, x)
    with pytest.raises(ValueError, match="already fused"):
        fuse_projections(model, x)
    quantized = quantize(build_tiny_denoiser("flux"), [x], "w8a8_static")
    with pytest.raises(ValueError, match="already quantized"):
        fuse_projections(quantized, x)


def test_cli_quantize_fuses_projections(tmp_path, capsys):
    from segquant.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\n")
    assert main(["calibrate", "tiny-sd3", "--prompts", str(prompts), "--out", str(tmp_path / "calib"), "--steps", "2",
                 "--sample-size", "2", "--timestep-per-sample", "1"]) == 0
    assert main(["quantize", "sd3", "--calib", str(tmp_path / "calib"), "--config", "w8a8_static",
                 "--fuse-projections", "-o", str(tmp_path / "q")]) == 0
    assert "transformer_blocks.0.attn.to_qkv" in capsys.readouterr().out
    restored = load_quantized(tmp_path / "q")
    assert isinstance(restored.transformer_blocks[0].attn.to_qkv, SegLinear)
    assert restored.transformer_blocks[0].attn.to_q is None


def test_a_pipeline_call_finds_the_unused_projections():
    """The README's form: the denoiser of a stock pipeline fused through one pipeline step."""
    from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs

    pipe = build_tiny_pipeline("sd3")

    def generate():
        return pipe(**tiny_prompt_inputs("sd3", "a red fox"), num_inference_steps=2, guidance_scale=2.0,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).images

    before = generate()
    rules = fuse_projections(pipe.transformer, lambda: pipe(**tiny_prompt_inputs("sd3", "a tree"),
                                                             num_inference_steps=1, output_type="latent"))
    assert set(rules) == {"*to_qkv", "*to_added_qkv"} and pipe.transformer.segquant_dropped_layers
    assert torch.equal(generate(), before)


def test_checkpoint_whose_dropped_layers_do_not_fit_is_a_named_error_before_any_change(tmp_path):
    import json

    from segquant.serialization import MODEL_NAME

    model, data = build_tiny_denoiser("sd3"), [tiny_example_inputs("sd3", seed=s) for s in range(2)]
    config = {**preset_dict("w8a8_static"), **fuse_projections(model, data[0])}
    folder = save_quantized(quantize(model, data, config), tmp_path / "q")
    description = json.loads((folder / MODEL_NAME).read_text())
    description["dropped_layers"] = ["transformer_blocks.0.attn.no_such_proj"]
    (folder / MODEL_NAME).write_text(json.dumps(description))
    target = build_tiny_denoiser("sd3")
    with pytest.raises(CheckpointMismatchError, match="no_such_proj"):
        load_quantized(target, folder, verify=False)
    assert not hasattr(target, "segquant_dropped_layers") and target.transformer_blocks[0].attn.to_q is not None


def quantized_both_ways(name):
    """The tiny ``name`` denoiser quantized with w8a8_static after fuse_projections (two steps) and with the
    ``fuse_projections`` config key (one step)."""
    data = [tiny_example_inputs(name, seed=s) for s in range(2)]
    two_steps = build_tiny_denoiser(name)
    quantize(two_steps, data, {**preset_dict("w8a8_static"), **fuse_projections(two_steps, data[0])})
    one_step = quantize(build_tiny_denoiser(name), data, {**preset_dict("w8a8_static"), "fuse_projections": True})
    return one_step, two_steps


@pytest.mark.parametrize("name", ["sd3", "unet"])
def test_config_key_fuses_inside_quantize_as_the_two_steps_do(name):
    one_step, two_steps = quantized_both_ways(name)
    assert one_step.segquant_dropped_layers == two_steps.segquant_dropped_layers
    assert one_step.segquant_plan.table() == two_steps.segquant_plan.table()
    assert one_step.segquant_plan.config["fuse_projections"] is True
    x = tiny_example_inputs(name, seed=5)
    assert torch.equal(output(one_step, x), output(two_steps, x))


def test_checkpoint_of_a_model_fused_by_the_config_key(tmp_path):
    model = quantized_both_ways("sd3")[0]
    restored = load_quantized(save_quantized(model, tmp_path / "q"))
    x = tiny_example_inputs("sd3", seed=6)
    assert torch.equal(output(restored, x), output(model, x))
    assert restored.segquant_plan.config["fuse_projections"] is True


def test_config_key_on_a_model_fused_before_or_without_fusable_projections(caplog):
    model, data = build_tiny_denoiser("flux"), [tiny_example_inputs("flux", seed=s) for s in range(2)]
    fuse_projections(model, data[0])
    dropped = list(model.segquant_dropped_layers)
    quantize(model, data, {**preset_dict("w8a8_static"), "fuse_projections": True})  # not fused twice
    assert model.segquant_dropped_layers == dropped and model.transformer_blocks[0].attn.to_qkv.smooth.shape[0] == 1
    plain = nn.Sequential(nn.Linear(8, 8))
    with caplog.at_level("WARNING", logger="segquant"):
        quantize(plain, [torch.randn(4, 8)], {**preset_dict("w8a8_static"), "fuse_projections": True})
    assert isinstance(plain[0], SegLinear) and "fuse_projections ignored" in caplog.text


def test_config_key_is_validated_and_round_trips(tmp_path):
    from segquant.config import QuantConfig, as_quant_config
    from segquant.errors import ConfigError

    config = as_quant_config({**preset_dict("w8a8_static"), "fuse_projections": True})
    assert config.fuse_projections and config.to_dict()["fuse_projections"] is True
    config.to_yaml(tmp_path / "c.yaml")
    assert QuantConfig.from_yaml(tmp_path / "c.yaml") == config
    assert "fuse_projections" not in as_quant_config("w8a8_static").to_dict()
    with pytest.raises(ConfigError, match="not a boolean"):
        as_quant_config({"default": {}, "fuse_projections": "yes"})
    with pytest.raises(ConfigError, match="did you mean 'fuse_projections'"):
        as_quant_config({"default": {}, "fuse_projection": True})
