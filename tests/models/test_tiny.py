"""The tiny diffusers testbeds build deterministically and run a forward pass with their example inputs."""

import pytest
import torch

from segquant.models.tiny import TINY_MODELS, build_tiny_denoiser, tiny_example_inputs

EXPECTED_CLASS = {
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
    "unet": "UNet2DConditionModel",
    "pixart": "PixArtTransformer2DModel",
    "sd3_controlnet": "SD3ControlNetModel",
    "flux_controlnet": "FluxControlNetModel",
    "controlnet": "ControlNetModel",
}


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


@pytest.mark.parametrize("name", TINY_MODELS)
def test_builds_and_runs(name):
    model = build_tiny_denoiser(name)
    assert type(model).__name__ == EXPECTED_CLASS[name]
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.no_grad():
        out = _first_tensor(model(**tiny_example_inputs(name, batch=2)))
    assert out.shape[0] == 2
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0  # zero-initialised ControlNet blocks were refilled


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_deterministic(name):
    a, b = build_tiny_denoiser(name, seed=3), build_tiny_denoiser(name, seed=3)
    c = build_tiny_denoiser(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    x1, x2 = tiny_example_inputs(name, seed=1), tiny_example_inputs(name, seed=1)
    assert torch.equal(x1["hidden_states"], x2["hidden_states"])
    assert x1["return_dict"] is False


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_denoiser("pixart", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_batch_size_and_sd3_layout():
    kw = tiny_example_inputs("sd3", batch=3)
    assert kw["hidden_states"].shape == (3, 4, 8, 8)
    model = build_tiny_denoiser("sd3")
    blocks = model.transformer_blocks
    assert len(blocks) == 3
    assert [b.attn2 is not None for b in blocks] == [True, True, False]
    assert blocks[-1].context_pre_only


def test_unknown_name():
    with pytest.raises(ValueError, match="allowed"):
        build_tiny_denoiser("sdxl-huge")
    with pytest.raises(ValueError, match="'nope'"):
        tiny_example_inputs("nope")
