"""process_affiner on the tiny stock pipelines: recurrent lockstep fitting, the corrections applied as
steppers, save/load, a third-party correction."""

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from segquant.affiner import (  # noqa: E402
    CorrectionMismatchError, installed, load_correction, process_affiner, save_correction)
from segquant.affiner.process import significant_gain  # noqa: E402
from segquant.errors import ConfigError, CorruptCheckpointError  # noqa: E402
from segquant.eval.harness import fp_call_tap, step_errors  # noqa: E402
from segquant.models.tiny_pipelines import TINY_DENOISER, build_tiny_pipeline, tiny_prompt_inputs  # noqa: E402
from segquant.pipeline.glue import swapped_denoiser  # noqa: E402

STEPS = 4


def distorted_copy(denoiser, last: str):
    """A 'quantized' twin: noisy weights and an affine distortion of the output (1.15 x + 0.05)."""
    q = copy.deepcopy(denoiser)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.03 * p.std().nan_to_num() * torch.randn(p.shape, generator=g))
        out = getattr(q, last)
        out.weight.mul_(1.15)
        out.bias.mul_(1.15).add_(0.05)
    return q


@pytest.fixture(scope="module", params=["sd3", "flux"])
def setup(request):
    name = request.param
    pipe = build_tiny_pipeline(name)
    fp = getattr(pipe, TINY_DENOISER[name])
    q = distorted_copy(fp, "proj_out")
    return name, pipe, q


def items(name, tag, n=4):
    return [tiny_prompt_inputs(name, f"{tag} {i}") for i in range(n)]


def held_out_errors(name, pipe, q, correction=None):
    calls = []
    kw = {"num_inference_steps": STEPS, "output_type": "latent", "guidance_scale": 2.0}
    with fp_call_tap(pipe, TINY_DENOISER[name], calls), torch.no_grad():
        for i, item in enumerate(items(name, "held out", 2)):
            pipe(**item, **kw, generator=torch.Generator().manual_seed(i))
    return step_errors(q, calls, STEPS, correction=correction)


@pytest.mark.parametrize("method", ["affiner", "ptqd", "tac"])
def test_recurrent_fit_reduces_per_step_error(setup, method):
    name, pipe, q = setup
    cfg = {"method": method, "num_inference_steps": STEPS, "guidance_scale": 2.0, "batch_size": 3, "blocksize": 2}
    corr = process_affiner(cfg, items(name, "fit", 6), pipe, q)
    assert sorted(corr.params) == list(range(STEPS)) and corr.num_steps == STEPS
    before, after = held_out_errors(name, pipe, q), held_out_errors(name, pipe, q, corr)
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(num_inference_steps=STEPS, output_type="latent", guidance_scale=2.0, **items(name, "held out", 1)[0])
    with torch.no_grad():
        ref = pipe(**kw, generator=gen())[0]
        with swapped_denoiser(pipe, q):
            raw = pipe(**kw, generator=gen())[0]
            with installed(pipe, corr):
                fixed = pipe(**kw, generator=gen())[0]
    assert (fixed - ref).norm() < (raw - ref).norm()


def test_non_recurrent_and_pipeline_pair(setup):
    name, pipe, q = setup
    qpipe = build_tiny_pipeline(name)
    setattr(qpipe, TINY_DENOISER[name], q)
    cfg = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "recurrent": False}
    corr = process_affiner(cfg, items(name, "fit"), pipe, qpipe, shuffle=False)
    before, after = held_out_errors(name, pipe, q), held_out_errors(name, pipe, q, corr)
    assert sum(after) < 0.8 * sum(before)


def test_save_load_round_trip_is_bitwise(setup, tmp_path):
    name, pipe, q = setup
    for method in ("affiner", "ptqd", "tac"):
        cfg = {"method": method, "num_inference_steps": STEPS, "guidance_scale": 2.0, "blocksize": 2}
        corr = process_affiner(cfg, items(name, "fit", 2), pipe, q)
        back = load_correction(save_correction(corr, tmp_path / method))
        assert type(back) is type(corr) and back.config() == corr.config()
        assert back.timesteps == corr.timesteps and back.num_steps == corr.num_steps
        for step, params in corr.params.items():
            assert all(torch.equal(back.params[step][k], v) for k, v in params.items())
        for step, bias in getattr(corr, "input_bias", {}).items():
            assert torch.equal(back.input_bias[step], bias)
    (tmp_path / "affiner" / "correction.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CorruptCheckpointError):
        load_correction(tmp_path / "affiner")
    (tmp_path / "ptqd" / "correction.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match="JSON"):
        load_correction(tmp_path / "ptqd")


class MeanShift:
    """A third-party correction: one scalar shift per step (mean of ε − ε̂), refitted on each call."""

    def __init__(self):
        self.sums, self.fits = {}, 0

    def fit(self, pred_q, pred_fp, info, inputs=None):
        total, count = self.sums.get(info.step_index, (0.0, 0))
        self.sums[info.step_index] = (total + float((pred_fp - pred_q).sum()), count + pred_q.numel())
        self.fits += 1

    def apply(self, pred_q, info):
        total, count = self.sums.get(info.step_index, (0.0, 1))
        return pred_q + total / count

    __call__ = apply


def test_thirdparty_affiner_plugs_in(setup):
    name, pipe, q = setup
    mine = MeanShift()
    cfg = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "batch_size": 2}
    assert process_affiner(cfg, items(name, "fit"), pipe, q, thirdparty_affiner=mine) is mine
    assert mine.fits == 2 * STEPS and sorted(mine.sums) == list(range(STEPS))
    assert sum(held_out_errors(name, pipe, q, mine)) < sum(held_out_errors(name, pipe, q))


def test_bad_input_is_named(setup):
    name, pipe, q = setup
    corr = process_affiner({"num_inference_steps": STEPS, "guidance_scale": 2.0}, items(name, "fit", 2), pipe, q)
    kw = dict(num_inference_steps=STEPS + 3, output_type="latent", guidance_scale=2.0, **items(name, "x", 1)[0])
    with swapped_denoiser(pipe, q), installed(pipe, corr), pytest.raises(CorrectionMismatchError):
        pipe(**kw)
    with pytest.raises(ConfigError, match="unknown key"):
        process_affiner({"block_size": 2}, items(name, "fit", 1), pipe, q)
    if name == "flux":  # no CFG: only noise_target='all'
        with pytest.raises(ConfigError, match="classifier-free guidance"):
            process_affiner({"num_inference_steps": 2, "noise_target": "uncond"}, items(name, "fit", 1), pipe, q)


class HarmfulShift(MeanShift):
    """A third-party correction that makes things worse: it adds ``strength`` to every prediction."""

    strength = 1.0

    def apply(self, pred_q, info):
        return pred_q + self.strength

    __call__ = apply


def test_held_out_prompts_switch_off_a_correction_that_does_not_help(setup, tmp_path):
    name, pipe, q = setup
    harmful = HarmfulShift()
    cfg = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "batch_size": 2, "validation_prompts": 1}
    process_affiner(cfg, items(name, "fit", 3), pipe, q, thirdparty_affiner=harmful)
    assert harmful.fits == STEPS  # the held-out prompt is not fitted on: 2 prompts, one batch per step
    assert harmful.strength == 0.0 and harmful.validation[0.0] < harmful.validation[0.5] < harmful.validation[1.0]
    corr = process_affiner({**cfg, "blocksize": 2}, items(name, "fit", 3), pipe, q)
    assert corr.strength > 0 and corr.validation[corr.strength] < corr.validation[0.0]
    assert load_correction(save_correction(corr, tmp_path / "affiner")).strength == corr.strength
    demanding = process_affiner({**cfg, "blocksize": 2, "validation_prompts": 2, "validation_z": 1e9},
                                items(name, "fit", 4), pipe, q)
    assert demanding.strength == 0.0


def test_significant_gain_is_a_one_sided_test_on_the_mean():
    gains = torch.tensor([0.10, 0.12, 0.08, 0.11])  # mean 0.1025, standard error ≈ 0.0085
    assert significant_gain(gains, 0.0) and significant_gain(gains, 10.0) and not significant_gain(gains, 13.0)
    assert not significant_gain(torch.tensor([0.3, -0.25, 0.2, -0.2]), 1.0)  # a positive mean inside its noise
    assert not significant_gain(-gains, 0.0)


def test_strength_blends_the_correction(setup):
    name, pipe, q = setup
    corr = process_affiner({"num_inference_steps": STEPS, "guidance_scale": 2.0}, items(name, "fit", 2), pipe, q)
    pred, info = torch.randn(2, *corr.grid_shape), type("Info", (), {"step_index": 0, "timestep": corr.timesteps[0],
                                                                      "branches": ("uncond", "cond")})()
    if name == "flux":
        pred = pred.flatten(2).transpose(1, 2)
    full = corr.apply(pred, info)
    corr.strength = 0.5
    assert torch.allclose(corr.apply(pred, info), (pred + full) / 2, atol=1e-6)
    corr.strength = 0.0
    assert corr.apply(pred, info) is pred


def test_bad_held_out_settings_are_named(setup):
    name, pipe, q = setup
    cfg = {"num_inference_steps": STEPS, "validation_prompts": 2}
    with pytest.raises(ConfigError, match="validation_prompts=2 leaves none of the 2 prompts"):
        process_affiner(cfg, items(name, "fit", 2), pipe, q)
    with pytest.raises(ConfigError, match="MeanShift has none"):
        process_affiner(cfg, items(name, "fit", 3), pipe, q, thirdparty_affiner=MeanShift())
    with pytest.raises(ConfigError, match="strengths"):
        process_affiner({**cfg, "strengths": ()}, items(name, "fit", 3), pipe, q)
    with pytest.raises(ConfigError, match="validation_z=2.0 needs validation_prompts ≥ 2"):
        process_affiner({**cfg, "validation_prompts": 1, "validation_z": 2.0}, items(name, "fit", 3), pipe, q)
