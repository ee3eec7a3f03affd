"""The baseline registry, its CLI parsing, and baselines run through segquant's own quantizer path."""

import pytest
import torch
from torch import nn

from segquant.baselines import BASELINES, Baseline, parse_baselines
from segquant.baselines.harness import CalibrationLoaders, granularity, not_applicable, quantize_entry
from segquant.baselines.ptq4dit import channel_salience, ptq4dit_quantize, timestep_salience
from segquant.errors import CalibrationError, ConfigError
from segquant.presets import PRESETS


def test_registry_names_are_disjoint_from_presets_and_state_bits_and_granularity():
    assert not set(BASELINES) & set(PRESETS)
    for name, b in BASELINES.items():
        assert b.name == name and b.bits.startswith("W") and b.granularity and b.description
        assert b.sampler in ("uniform", "normal")
    assert BASELINES["ptq4dm_w8a8"].sampler == "normal" and BASELINES["qdiffusion_w8a8"].sampler == "uniform"
    assert granularity("ptq4dm_w8a8").startswith("W8A8: W int8 per-channel")
    assert granularity("rtn_w8a8") == "W int8 per-channel, A int8 dynamic per-token"
    assert granularity("w4a8") == "W int4 per-group(64), A int8 static per-tensor"


def test_parse_baselines():
    assert parse_baselines("all") == list(BASELINES)
    assert parse_baselines("") == [] and parse_baselines(None) == []
    assert parse_baselines(" ptq4dm_w8a8, svdquant_w4a4 ") == ["ptq4dm_w8a8", "svdquant_w4a4"]
    with pytest.raises(ConfigError, match="did you mean 'ptq4dm_w8a8'"):
        parse_baselines("ptq4dm_w8a9")


def test_not_applicable_names_the_reason():
    unet = type("UNet2DConditionModel", (nn.Module,), {})()
    assert "diffusion transformers" in not_applicable("ptq4dit_w8a8", unet)
    assert not_applicable("ptq4dit_w8a8", nn.Linear(2, 2)) is None
    assert not_applicable("w8a8", unet) is None  # presets always apply
    missing = Baseline("x", "X", "W8A8", "g", "d", requires="no_such_package_h7")
    assert "no_such_package_h7" in missing.not_applicable(nn.Linear(2, 2))


def test_calibration_loaders_record_each_sampler_once():
    recorded = []
    loaders = CalibrationLoaders("U", 1.5, lambda kind: recorded.append(kind) or f"loader-{kind}")
    assert loaders.get("w8a8") == ("U", 1.5) and loaders.get("qdiffusion_w8a8") == ("U", 1.5)
    assert loaders.get("ptq4dm_w8a8")[0] == "loader-normal"
    assert loaders.get("ptq4dm_w4a8")[0] == "loader-normal"
    assert recorded == ["normal"]


class _TinyDiT(nn.Module):
    """A denoiser-like module: keyword inputs with a per-sample timestep, batch-first linear inputs."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, hidden_states, timestep):
        h = hidden_states * (1 + timestep[:, None, None] / 100)
        return self.fc2(torch.nn.functional.gelu(self.fc1(h)))


def _batches():
    out = []
    for t in (10.0, 500.0, 990.0):
        x = torch.randn(2, 8, 16)
        x[..., int(t) % 16] *= 30  # an outlier channel that moves with the timestep
        out.append({"hidden_states": x, "timestep": torch.full((2,), t)})
    return out


def test_ptq4dit_smoothing_balances_the_timestep_weighted_salience():
    model, batches = _TinyDiT(), _batches()
    config = BASELINES["ptq4dit_w8a8"].config
    ref = model.fc1.weight.detach().clone()
    per_step = torch.stack([channel_salience(b["hidden_states"] * (1 + b["timestep"][0] / 100)) for b in batches])
    expected, eta = timestep_salience(per_step, channel_salience(ref))
    q = ptq4dit_quantize(model, batches, config)
    lam = torch.sqrt(expected / channel_salience(ref))
    assert torch.allclose(q.fc1.smooth[0], lam, rtol=1e-4)
    assert not torch.allclose(lam, torch.sqrt(per_step.amax(0) / channel_salience(ref)), rtol=1e-2)
    assert eta.shape == (3,)


def test_ptq4dit_needs_a_timestep_argument():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(CalibrationError, match="timestep"):
        ptq4dit_quantize(model, [torch.randn(2, 4)], BASELINES["ptq4dit_w8a8"].config)


@pytest.mark.parametrize("name", ["ptq4dm_w8a8", "svdquant_w4a4_gptq", "qdiffusion_w4a8"])
def test_paper_baselines_quantize_a_model(name):
    model, batches = _TinyDiT(), _batches()
    x = batches[0]
    with torch.no_grad():
        ref = model(**x)
    q = quantize_entry(model, batches, name)
    with torch.no_grad():
        err = float((q(**x) - ref).norm() / ref.norm())
    assert type(q.fc1).__name__ == "SegLinear" and 0 < err < 0.3
