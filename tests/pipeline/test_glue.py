"""Pipeline glue: denoiser lookup/swap, fixed-seed generation, step location and the stepper hook."""

import pytest
import torch
from torch import nn

from segquant.errors import CalibrationError, ConfigError
from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs
from segquant.pipeline import (
    StepInfo,
    find_denoisers,
    generate,
    get_denoiser,
    install_stepper,
    locate_step,
    resolve_layer,
    swap_denoiser,
    swapped_denoiser,
)

pytest.importorskip("diffusers")


class Scaled(nn.Module):
    """A denoiser wrapper that multiplies the predicted sample by ``factor`` (the stepper's twin)."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor
        self.config, self.dtype, self.device = inner.config, inner.dtype, inner.device
        if hasattr(inner, "cache_context"):  # FLUX pipelines call transformer.cache_context(...)
            self.cache_context = inner.cache_context

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return (out[0] * self.factor, *out[1:])


def run(pipe, name, steps=4, seed=0, **kwargs):
    items = [tiny_prompt_inputs(name, "a red fox")]
    kwargs.setdefault("guidance_scale", 2.0)
    return generate(pipe, items, seed=seed, num_inference_steps=steps, output_type="latent", **kwargs)[0]


def test_find_get_and_resolve_denoisers():
    pipe = build_tiny_pipeline("sd3_controlnet")
    assert list(find_denoisers(pipe)) == ["transformer", "controlnet"]
    assert get_denoiser(pipe) == ("transformer", pipe.transformer)
    assert get_denoiser(build_tiny_pipeline("sdxl"))[0] == "unet"
    with pytest.raises(ConfigError, match="no module 'unet'; its denoisers: transformer, controlnet"):
        get_denoiser(pipe, "unet")
    block = pipe.transformer.transformer_blocks[0]
    assert resolve_layer(pipe, "transformer.transformer_blocks.0") == ("transformer.transformer_blocks.0", block)
    assert resolve_layer(pipe, block)[0] == "transformer.transformer_blocks.0"
    with pytest.raises(ConfigError, match="no submodule 'nope'"):
        resolve_layer(pipe, "transformer.nope")


def test_generate_is_fixed_seed_per_item():
    pipe = build_tiny_pipeline("sd3")
    items = [tiny_prompt_inputs("sd3", p) for p in ("a red fox", "a blue car")]
    a = generate(pipe, items, seed=3, num_inference_steps=3, output_type="latent")
    b = generate(pipe, items, seed=3, num_inference_steps=3, output_type="latent")
    alone = generate(pipe, items[1:], seed=4, num_inference_steps=3, output_type="latent")
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[1], alone[0]) and not torch.equal(a[0], a[1])
    images = generate(pipe, items[:1], num_inference_steps=2, output_type="pt")
    assert images[0].shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="seed"):
        generate(pipe, items, generator=torch.Generator())


def test_swap_denoiser_and_restore():
    pipe = build_tiny_pipeline("sd3")
    original = pipe.transformer
    base = run(pipe, "sd3")
    wrapper = Scaled(original, 0.5)
    with swapped_denoiser(pipe, wrapper):
        assert pipe.transformer is wrapper
        changed = run(pipe, "sd3")
    assert pipe.transformer is original and torch.equal(run(pipe, "sd3"), base)
    assert not torch.allclose(changed, base)
    assert swap_denoiser(pipe, wrapper) is original and pipe.transformer is wrapper
    swap_denoiser(pipe, original)


@pytest.mark.parametrize("name", ["sd3", "flux", "sdxl"])
def test_identity_stepper_is_bit_identical(name):
    pipe = build_tiny_pipeline(name)
    base = run(pipe, name)
    with install_stepper(pipe, lambda out, info: out):
        same = run(pipe, name)
    assert torch.equal(same, base)
    assert not get_denoiser(pipe)[1]._forward_hooks


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_scaling_stepper_matches_a_scaled_denoiser_exactly(name):
    pipe = build_tiny_pipeline(name)
    with install_stepper(pipe, lambda out, info: out * 0.75):
        stepped = run(pipe, name)
    wrapper = Scaled(pipe.transformer, 0.75)
    with swapped_denoiser(pipe, wrapper):
        reference = run(pipe, name)
        with install_stepper(pipe, lambda out, info: out):  # the probe restores the wrapper's own attribute
            assert torch.equal(run(pipe, name), reference)
    assert ("cache_context" in wrapper.__dict__) == (name == "flux")
    assert torch.equal(stepped, reference)
    assert not torch.equal(stepped, run(pipe, name))


def test_zero_stepper_freezes_flow_matching_latents():
    pipe = build_tiny_pipeline("sd3")
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with install_stepper(pipe, lambda out, info: torch.zeros_like(out)):
        final = run(pipe, "sd3", latents=start.clone())
    assert torch.equal(final, start)  # x_{t-1} = x_t + dt * 0


@pytest.mark.parametrize("name, guidance, branches", [("sd3", 2.0, ("uncond", "cond")), ("sdxl", 2.0, ("uncond", "cond")),
                                                      ("flux", 2.0, ("cond",)), ("sd3", 1.0, ("cond",))])
def test_stepper_is_keyed_by_the_pipeline_step(name, guidance, branches):
    pipe = build_tiny_pipeline(name)
    seen = []

    def stepper(out, info):
        assert isinstance(info, StepInfo)
        seen.append(info)
        return out * 0.0 if info.step_index == 2 else out  # a correction for one step only

    with install_stepper(pipe, stepper):
        run(pipe, name, steps=5, guidance_scale=guidance)
    assert [s.step_index for s in seen] == [0, 1, 2, 3, 4]
    assert [s.timestep for s in seen] == pytest.approx([float(t) for t in pipe.scheduler.timesteps])
    assert all(s.branches == branches for s in seen)


def test_stepper_shape_violation_and_cleanup():
    pipe = build_tiny_pipeline("sd3")
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        with install_stepper(pipe, lambda out, info: out[:1]):
            run(pipe, "sd3")
    assert not pipe.transformer._forward_hooks and "cache_context" not in pipe.transformer.__dict__


def test_locate_step_without_step_index_matches_timesteps():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    assert locate_step(ddim, float(ddim.timesteps[4])) == (4, float(ddim.timesteps[4]))
    with pytest.raises(CalibrationError, match="matches none"):
        locate_step(ddim, 3.5)
    with pytest.raises(CalibrationError, match="no timestep argument"):
        locate_step(ddim, None)

    class Repeating:  # duplicated timesteps, no step_index: ambiguous
        timesteps = torch.tensor([900.0, 900.0, 500.0])

    with pytest.raises(CalibrationError, match="several"):
        locate_step(Repeating(), 900.0)
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(6)
    assert locate_step(flow, float(flow.timesteps[0]) / 1000)[0] == 0  # FLUX passes t / 1000
    flow.step(torch.zeros(1), flow.timesteps[0], torch.zeros(1))
    flow.step(torch.zeros(1), flow.timesteps[1], torch.zeros(1))
    assert locate_step(flow, float(flow.timesteps[2]))[0] == 2
