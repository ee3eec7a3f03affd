"""The denoiser tap: step info with prompt ids, inputs/outputs, output replacement, lockstep with a second
model, and the stepper installed by a plain call."""

import copy

import pytest
import torch

from segquant.errors import CalibrationError
from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs
from segquant.pipeline import (
    DenoiserTap,
    generate,
    install_stepper,
    output_sample,
    remove_stepper,
    replace_sample,
    swapped_denoiser,
)

pytest.importorskip("diffusers")


def batch_inputs(name, prompts):
    items = [tiny_prompt_inputs(name, p) for p in prompts]
    return {k: torch.cat([it[k] for it in items]) if isinstance(v, torch.Tensor) else v for k, v in items[0].items()}


def test_tap_labels_rows_with_prompt_ids_and_sees_inputs_and_outputs():
    pipe = build_tiny_pipeline("sd3")
    seen = []
    tap = DenoiserTap(pipe, after=lambda call: seen.append((call.info, call.inputs["hidden_states"].shape, call.sample.shape)))
    with tap, tap.prompts([7, 9]):
        pipe(**batch_inputs("sd3", ["a red fox", "a blue car"]), num_inference_steps=3, guidance_scale=2.0,
             output_type="latent", generator=torch.Generator().manual_seed(0))
    assert [info.step_index for info, _, _ in seen] == [0, 1, 2]
    for info, in_shape, out_shape in seen:
        assert info.branches == ("uncond", "uncond", "cond", "cond")
        assert info.prompt_ids == (7, 9, 7, 9) and info.prompt_id is None and info.call_index == 0
        assert in_shape == out_shape == (4, 4, 8, 8)
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks


def test_tap_rejects_prompt_ids_that_do_not_fit_the_rows():
    pipe = build_tiny_pipeline("sd3")
    tap = DenoiserTap(pipe)
    with pytest.raises(CalibrationError, match="transformer: a call with 1 'uncond' rows cannot hold the 2 prompts"):
        with tap, tap.prompts([0, 1]):
            pipe(**tiny_prompt_inputs("sd3", "a red fox"), num_inference_steps=2, guidance_scale=2.0, output_type="latent")


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_lockstep_second_model_replaces_output_like_a_swapped_denoiser(name):
    """The affiner's use: run a second (here: perturbed) denoiser on each tapped call's exact inputs."""
    pipe = build_tiny_pipeline(name)
    twin = copy.deepcopy(pipe.transformer)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.05)
    errors = {}

    def after(call):
        twin_sample = output_sample(call.run(twin))
        errors[call.info.step_index] = float((twin_sample - call.sample).norm() / call.sample.norm())
        return call.with_sample(twin_sample)

    item = [tiny_prompt_inputs(name, "a red fox")]
    kwargs = dict(seed=0, num_inference_steps=4, output_type="latent", guidance_scale=2.0)
    with DenoiserTap(pipe, after=after):
        tapped = generate(pipe, item, **kwargs)[0]
    with swapped_denoiser(pipe, twin):
        reference = generate(pipe, item, **kwargs)[0]
    assert torch.equal(tapped, reference)
    assert sorted(errors) == [0, 1, 2, 3] and all(e > 0 for e in errors.values())


def test_output_sample_and_replace_sample_keep_the_structure():
    x, y = torch.ones(2), torch.zeros(2)
    assert replace_sample((x, "extra"), y)[0] is y and replace_sample([x], y)[0] is y
    assert replace_sample(x, y) is y and replace_sample({"sample": x}, y)["sample"] is y
    with pytest.raises(TypeError, match="output of type str"):
        output_sample("nope")


def test_plain_install_stepper_runs_until_removed():
    pipe = build_tiny_pipeline("sd3")
    calls = []

    def stepper(out, info):
        calls.append(info.step_index)
        return out

    handle = install_stepper(pipe, stepper)  # the README's plain call
    generate(pipe, [tiny_prompt_inputs("sd3", "a red fox")], num_inference_steps=3, output_type="latent")
    assert calls == [0, 1, 2]
    handle.remove()
    generate(pipe, [tiny_prompt_inputs("sd3", "a red fox")], num_inference_steps=3, output_type="latent")
    assert calls == [0, 1, 2] and not pipe.transformer._forward_hooks
    install_stepper(pipe, stepper)
    install_stepper(pipe, stepper)
    assert remove_stepper(pipe) == 2 and not pipe.transformer._forward_hooks
    assert remove_stepper(pipe) == 0
    with pytest.raises(TypeError, match="stepper must be callable"):
        install_stepper(pipe, "not a function")
