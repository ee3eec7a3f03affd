"""Each baseline's defining ingredient does what its paper says, on a small CPU case."""

import copy

import pytest
import torch
from torch import nn

from segquant.algorithms.clipping import amax_clip, mse_clip
from segquant.baselines.adaround import AdaRoundSettings, nearest_codes, reconstruct_block
from segquant.baselines.harness import sampler_for
from segquant.baselines.ptq4dit import balance, channel_salience, spearman, timestep_salience
from segquant.baselines.qdiffusion import flat_output, record_blocks
from segquant.enums import DType
from segquant.numerics import PerChannel, PerTensor, fake_quant, scale_from_amax


@pytest.mark.parametrize("dtype, factor", [(DType.INT4, 0.5), (DType.INT8, 0.99)])
def test_ptq4dm_mse_scale_search_beats_amax_on_heavy_tails(dtype, factor):
    x = torch.distributions.StudentT(3.0).sample((4096,)).reshape(64, 64)
    errors = {}
    for name, amax in (("amax", amax_clip(x, PerTensor())), ("mse", mse_clip(x, dtype, PerTensor(), lo=0.05))):
        errors[name] = float((x - fake_quant(x, scale_from_amax(amax, dtype), dtype)).pow(2).mean())
    assert errors["mse"] < factor * errors["amax"]


def test_ptq4dm_normal_sampler_concentrates_steps_and_keeps_the_amount_of_data():
    prompts = [f"p{i}" for i in range(8)]
    uniform, up = sampler_for("uniform", 20, prompts, 6)
    normal, np_ = sampler_for("normal", 20, prompts, 6)
    assert len(np_) == 2 * len(up) and normal.timestep_per_sample == 3
    assert normal.sample_size * normal.timestep_per_sample == uniform.sample_size * uniform.timestep_per_sample
    def middle(sampler, n):
        drawn = [s for i in range(n) for s in sampler.steps_for(i)]
        return sum(5 <= s <= 14 for s in drawn) / len(drawn)

    assert middle(normal, len(np_)) > middle(uniform, len(up)) + 0.1  # the normal's mass is in the middle
    assert len({tuple(normal.steps_for(i)) for i in range(len(np_))}) > 1  # drawn per trajectory


def _outlier_pair(k=32):
    x = torch.randn(256, k)
    x[:, 3] *= 40  # an activation outlier channel
    w = torch.randn(16, k) * 0.05
    w[:, 7] *= 30  # a weight outlier channel elsewhere
    return x, w


def test_ptq4dit_salience_balancing_lowers_the_max_salience_and_keeps_the_product():
    x, w = _outlier_pair()
    sx, sw = channel_salience(x), channel_salience(w)
    b = balance(sx, w)
    xb, wb = x * b, w / b
    assert torch.allclose(xb @ wb.T, x @ w.T, rtol=1e-4, atol=1e-4)  # mathematically equivalent
    before = torch.maximum(sx, sw).max()
    after = torch.maximum(channel_salience(xb), channel_salience(wb)).max()
    assert after < 0.5 * before
    assert torch.allclose(channel_salience(xb), channel_salience(wb), rtol=1e-4)  # balanced


def test_ptq4dit_balancing_lowers_quantization_error_of_the_product():
    x, w = _outlier_pair()
    b = balance(channel_salience(x), w)

    def qerr(a, m):
        qa = fake_quant(a, scale_from_amax(amax_clip(a, PerTensor()), DType.INT8), DType.INT8)
        qm = fake_quant(m, scale_from_amax(amax_clip(m, PerChannel()), DType.INT8), DType.INT8)
        return float((qa @ qm.T - x @ w.T).pow(2).mean())

    assert qerr(x * b, w / b) < 0.5 * qerr(x, w)


def test_ptq4dit_ssc_weighs_timesteps_complementary_to_the_weight_most():
    sw = torch.arange(1.0, 17.0)
    correlated, complementary = sw.clone(), sw.flip(0)
    per_step = torch.stack([correlated, complementary])
    salience, eta = timestep_salience(per_step, sw)
    assert spearman(correlated, sw) > 0.99 and spearman(complementary, sw) < -0.99
    assert eta[1] > eta[0] and torch.isclose(eta.sum(), torch.tensor(1.0))
    assert torch.allclose(salience, eta[0] * correlated + eta[1] * complementary)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x, scale=1.0):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)) * scale)


def _block_error(block, x, target, codes, scales):
    q = copy.deepcopy(block)
    for name, c in codes.items():
        getattr(q, name).weight.data = c * scales[name]
    with torch.no_grad():
        return float((q(x) - target).pow(2).sum(1).mean())


def test_qdiffusion_adaround_lowers_block_output_error_vs_nearest():
    dtype = DType.INT4
    block = _Block()
    xs = [torch.randn(64, 16) for _ in range(4)]
    with torch.no_grad():
        targets = [block(x) for x in xs]
    layers = {"fc1": block.fc1, "fc2": block.fc2}
    scales = {n: scale_from_amax(amax_clip(m.weight, PerChannel()), dtype).expand_as(m.weight)
              for n, m in layers.items()}
    weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    nearest = {n: nearest_codes(weights[n], scales[n], dtype) for n in layers}
    learned = reconstruct_block(lambda i: block(xs[i]), targets, layers, scales, dtype,
                                AdaRoundSettings(iters=300, lr=5e-2))
    assert all(torch.equal(layers[n].weight, weights[n]) for n in layers)  # weights restored
    for n in layers:  # integer codes on the grid, each within one step of the weight
        assert torch.equal(learned[n], learned[n].round())
        assert ((learned[n] - weights[n] / scales[n]).abs() < 1 + 1e-5).all()
    x_test = torch.randn(256, 16)
    with torch.no_grad():
        t_test = block(x_test)
    learned_error = _block_error(block, x_test, t_test, learned, scales)
    assert learned_error < 0.8 * _block_error(block, x_test, t_test, nearest, scales)


def test_qdiffusion_records_block_inputs_and_outputs():
    model = nn.Sequential(_Block(), nn.Linear(8, 4))
    batches = [torch.randn(3, 16) for _ in range(3)]
    recs = record_blocks(model, ["0", "1"], batches, batches=2)
    assert len(recs["0"]) == 2 and len(recs["1"]) == 2
    args, kwargs, out = recs["0"][1]
    assert torch.equal(args[0], batches[1]) and out.shape == (3, 8)
    assert torch.allclose(model[0](*args, **kwargs), out)
    assert flat_output((torch.ones(2, 3), [torch.zeros(2, 1, 2)])).shape == (2, 5)
