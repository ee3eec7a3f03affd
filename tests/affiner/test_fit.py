"""The closed-form per-step fits against brute-force least squares, exact recovery, PTQD and TAC on
synthetic data (no pipeline)."""

import pytest
import torch

from segquant.affiner import BlockwiseAffiner, PTQDCorrector, TACCorrector
from segquant.affiner.base import CorrectionMismatchError
from segquant.errors import ConfigError
from segquant.pipeline.steps import StepInfo


def info(rows, step=0, t=1000.0, uncond=False):
    branches = ("uncond",) * (rows // 2) + ("cond",) * (rows - rows // 2) if uncond else ("cond",) * rows
    return StepInfo(step, t, branches)


def brute_force(q, fp, bs, alpha, lam1, lam2):
    """Per (channel, block): lstsq on sqrt-weighted rows plus penalty rows; q, fp (R, C, H, W) float64."""
    r, c, h, w = q.shape
    n = c * h * w
    weights = alpha / n + (1 - alpha) / fp.reshape(r, -1).pow(2).sum(1)
    hb, wb = -(-h // bs), -(-w // bs)
    k, b = torch.empty(c, hb, wb, dtype=torch.float64), torch.empty(c, hb, wb, dtype=torch.float64)
    for ch in range(c):
        for i in range(hb):
            for j in range(wb):
                xs = q[:, ch, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]
                ys = fp[:, ch, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]
                sw = weights.sqrt().reshape(-1, 1, 1).expand_as(xs).reshape(-1)
                a = torch.stack([xs.reshape(-1) * sw, sw], 1)
                y = ys.reshape(-1) * sw
                a = torch.cat([a, torch.tensor([[lam1 ** 0.5, 0.0], [0.0, lam2 ** 0.5]], dtype=torch.float64)])
                y = torch.cat([y, torch.tensor([lam1 ** 0.5, 0.0], dtype=torch.float64)])
                sol = torch.linalg.lstsq(a, y.unsqueeze(1), driver="gelsd").solution.squeeze(1)
                k[ch, i, j], b[ch, i, j] = sol
    return k, b


@pytest.mark.parametrize("bs,hw,alpha,lam1,lam2", [(1, (3, 5), 0.5, 0.0, 0.0), (2, (5, 6), 0.3, 0.2, 0.1),
                                                   (2, (4, 4), 1.0, 0.0, 0.5), (3, (7, 5), 0.0, 1.0, 0.0)])
def test_pooled_closed_form_equals_brute_force(bs, hw, alpha, lam1, lam2):
    q = torch.randn(6, 2, *hw, dtype=torch.float64)
    fp = 1.3 * q + 0.2 * torch.randn_like(q) + 0.1
    aff = BlockwiseAffiner(blocksize=bs, alpha=alpha, lambda1=lam1, lambda2=lam2)
    aff.fit(q[:2], fp[:2], info(2))  # two calls of one step: one pooled problem
    aff.fit(q[2:], fp[2:], info(4))
    k, b = brute_force(q, fp, bs, alpha, lam1, lam2)
    torch.testing.assert_close(aff.params[0]["K"].double(), k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aff.params[0]["b"].double(), b, rtol=1e-5, atol=1e-6)


def test_packed_flux_latents_fit_on_the_token_grid():
    h, w, c = 2, 3, 4  # non-square token grid, from img_ids
    q = torch.randn(5, h * w, c, dtype=torch.float64)
    fp = 0.8 * q + 0.3 * torch.randn_like(q)
    ids = torch.stack([torch.zeros(h * w), torch.arange(h * w) // w, torch.arange(h * w) % w], 1)
    aff = BlockwiseAffiner(blocksize=2, alpha=0.5, lambda1=0.1)
    aff.fit(q, fp, info(5), {"img_ids": ids})
    grid = lambda x: torch.stack([x[:, s, :] for s in range(h * w)], 2).reshape(5, c, h, w)  # noqa: E731
    k, b = brute_force(grid(q), grid(fp), 2, 0.5, 0.1, 0.0)
    torch.testing.assert_close(aff.params[0]["K"].double(), k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(aff.params[0]["b"].double(), b, rtol=1e-5, atol=1e-6)
    assert aff.grid_shape == (c, h, w) and aff.packed_grid == (h, w)
    out = aff.apply(q.float(), info(5))
    assert out.shape == q.shape
    expected = k.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w] * grid(q) \
        + b.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
    torch.testing.assert_close(grid(out.double()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bs", [1, 2])
def test_affine_distortion_is_corrected_exactly(bs):
    k_true = 1 + 0.5 * torch.rand(3, 6 // bs, 4 // bs, dtype=torch.float64)
    b_true = torch.randn(3, 6 // bs, 4 // bs, dtype=torch.float64)
    fp = torch.randn(8, 3, 6, 4, dtype=torch.float64)
    expand = lambda p: p.repeat_interleave(bs, 1).repeat_interleave(bs, 2)  # noqa: E731
    q = (fp - expand(b_true)) / expand(k_true)  # fp = K q + b
    aff = BlockwiseAffiner(blocksize=bs, alpha=0.2)
    aff.fit(q, fp, info(8))
    torch.testing.assert_close(aff.params[0]["K"].double(), k_true, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aff.params[0]["b"].double(), b_true, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aff(q.float(), info(8)).double(), fp, rtol=1e-4, atol=1e-4)


def test_noise_target_rows_and_enable_timesteps():
    q, fp = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    aff = BlockwiseAffiner(noise_target="uncond", enable_timesteps=[1])
    aff.fit(q, fp, info(4, step=0, uncond=True))
    assert 0 not in aff.params  # step 0 not enabled: passes unchanged
    aff.fit(q, fp, info(4, step=1, t=900.0, uncond=True))
    aff.finish(2)
    out = aff(q, info(4, step=1, t=900.0, uncond=True))
    assert torch.equal(out[2:], q[2:]) and not torch.equal(out[:2], q[:2])  # only the uncond rows
    assert torch.equal(aff(q, info(4, step=0, uncond=True)), q)


def test_noise_target_without_cfg_is_a_clear_error():
    aff = BlockwiseAffiner(noise_target="text")
    aff.fit(torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), info(2))
    with pytest.raises(ConfigError, match="classifier-free guidance"):
        aff.finish(1)
    with pytest.raises(ConfigError, match="noise_target"):
        BlockwiseAffiner(noise_target="neg")


def test_mismatched_steps_and_shape_are_named_errors():
    aff = BlockwiseAffiner()
    for step, t in enumerate((1000.0, 750.0)):
        aff.fit(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), info(2, step, t))
    aff.finish(2)
    with pytest.raises(CorrectionMismatchError, match="timestep"):
        aff(torch.randn(2, 1, 4, 4), info(2, 1, 980.0))  # step 1 of a 50-step schedule
    with pytest.raises(CorrectionMismatchError, match="longer"):
        aff(torch.randn(2, 1, 4, 4), info(2, 2, 500.0))
    with pytest.raises(CorrectionMismatchError, match="latent grid"):
        aff(torch.randn(2, 1, 8, 4), info(2, 0, 1000.0))


def test_ptqd_recovers_slope_and_channel_bias():
    eps = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    bias = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64).reshape(1, 3, 1, 1)
    resid = 0.05 * torch.randn_like(eps)
    resid = resid - resid.mean(dim=(0, 2, 3), keepdim=True)
    resid = resid - (resid * eps).sum() / eps.pow(2).sum() * eps  # uncorrelated with ε
    q = 1.2 * eps + bias + resid
    ptqd = PTQDCorrector()
    ptqd.fit(q, eps, info(16))
    p = ptqd.params[0]
    assert abs(float(p["k"]) - 0.2) < 0.02
    torch.testing.assert_close(p["bias"].double(), bias.reshape(3), atol=0.01, rtol=0)
    torch.testing.assert_close(p["var"].double(), resid.pow(2).mean(dim=(0, 2, 3)), atol=1e-4, rtol=0.2)
    corrected = ptqd(q.float(), info(16)).double()
    assert (corrected - eps).norm() < 0.2 * (q - eps).norm()


def test_tac_scale_and_input_bias_correction():
    eps = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    scale = torch.tensor([0.9, 1.25], dtype=torch.float64).reshape(1, 2, 1, 1)
    tac = TACCorrector()
    tac.fit(eps / scale, eps, info(8))
    torch.testing.assert_close(tac.params[0]["scale"].double(), scale.reshape(2), rtol=1e-6, atol=1e-6)
    tac.input_bias = {0: torch.tensor([0.5, -0.25])}
    x = torch.randn(2, 2, 4, 4)
    shifted = x + torch.tensor([0.5, -0.25]).reshape(1, 2, 1, 1)
    torch.testing.assert_close(tac.correct_input(shifted, 0), x)
    packed = torch.randn(2, 16, 2)
    torch.testing.assert_close(tac.correct_input(packed + torch.tensor([0.5, -0.25]), 0), packed)
    assert tac.correct_input(x, 3) is x  # no bias fitted for step 3
