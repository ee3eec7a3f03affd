"""The channel corrector (``ε' = ε̂ + M ε̂ + N x + b`` per step) on synthetic data: exact recovery of a
planted map, the ridge fit against brute-force least squares, packed latents, save/load, named errors."""

import pytest
import torch

from segquant.affiner import ChannelCorrector, load_correction, save_correction
from segquant.affiner.base import CorrectionMismatchError
from segquant.errors import ConfigError
from segquant.pipeline.steps import StepInfo


def info(rows, step=0, t=1000.0):
    return StepInfo(step, t, ("cond",) * rows)


def planted(c=4, rows=6, hw=(5, 3), seed=0):
    """``(q, x, fp, M, N, b)``: random ε̂ and x ``(R, C, H, W)``, ε = ε̂ + M ε̂ + N x + b exactly (float64)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    q, x = rand(rows, c, *hw), rand(rows, c, *hw)
    m, n, b = 0.2 * rand(c, c), 0.2 * rand(c, c), 0.1 * rand(c)
    mix = lambda a, t: torch.einsum("cd,rdhw->rchw", a, t)  # noqa: E731
    fp = q + mix(m, q) + mix(n, x) + b.reshape(1, -1, 1, 1)
    return q, x, fp, m, n, b


@pytest.mark.parametrize("c", [4, 16])
def test_planted_linear_map_is_recovered_exactly(c):
    q, x, fp, m, n, b = planted(c=c, rows=6, hw=(6, 6) if c == 16 else (5, 3))
    corr = ChannelCorrector(alpha=0.3)
    corr.fit(q[:2], fp[:2], info(2), {"hidden_states": x[:2]})  # two calls of one step: one pooled problem
    corr.fit(q[2:], fp[2:], info(4), {"hidden_states": x[2:]})
    p = corr.params[0]
    torch.testing.assert_close(p["M"].double(), m, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p["N"].double(), n, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p["b"].double(), b, rtol=1e-4, atol=1e-5)
    out = corr.apply(q.float(), info(6), {"hidden_states": x.float()})
    torch.testing.assert_close(out.double(), fp, rtol=1e-4, atol=1e-4)


def test_without_input_fits_pure_channel_mixing():
    q, x, fp, m, n, b = planted()
    fp = fp - torch.einsum("cd,rdhw->rchw", n, x)  # no x term in the target
    corr = ChannelCorrector(use_input=False)
    corr.fit(q, fp, info(6))  # no inputs needed
    assert set(corr.params[0]) == {"M", "b"}
    torch.testing.assert_close(corr.params[0]["M"].double(), m, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(corr(q.float(), info(6)).double(), fp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha,lam1,lam2", [(0.5, 0.3, 0.0), (0.0, 0.05, 0.2), (1.0, 0.0, 1.0)])
def test_ridge_fit_equals_brute_force(alpha, lam1, lam2):
    q, x, fp, *_ = planted(c=3, rows=5, hw=(4, 2))
    fp = fp + 0.3 * torch.randn(fp.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    corr = ChannelCorrector(alpha=alpha, lambda1=lam1, lambda2=lam2)
    corr.fit(q, fp, info(5), {"sample": x})
    r, c = q.shape[:2]
    w = (alpha / fp[0].numel() + (1 - alpha) / fp.reshape(r, -1).pow(2).sum(1)).sqrt()
    z = torch.cat([q, x, torch.ones_like(q[:, :1])], 1).permute(0, 2, 3, 1).reshape(r, -1, 2 * c + 1)
    y = (fp - q).permute(0, 2, 3, 1).reshape(r, -1, c)
    a = (z * w.reshape(-1, 1, 1)).reshape(-1, 2 * c + 1)
    t = (y * w.reshape(-1, 1, 1)).reshape(-1, c)
    pen = torch.tensor([lam1] * (2 * c) + [lam2], dtype=torch.float64).sqrt()
    sol = torch.linalg.lstsq(torch.cat([a, torch.diag(pen)]), torch.cat([t, torch.zeros(2 * c + 1, c,
                                                                                          dtype=torch.float64)]),
                             driver="gelsd").solution
    p = corr.params[0]
    torch.testing.assert_close(p["M"].double(), sol[:c].T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p["N"].double(), sol[c:2 * c].T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p["b"].double(), sol[-1], rtol=1e-5, atol=1e-6)


def test_packed_flux_latents_mix_the_last_axis():
    q, x, fp, m, n, b = planted(c=4, rows=3, hw=(2, 3))
    pack = lambda t: t.reshape(3, 4, 6).transpose(1, 2).contiguous().float()  # noqa: E731  (B, S, C)
    ids = torch.stack([torch.zeros(6), torch.arange(6) // 3, torch.arange(6) % 3], 1)
    corr = ChannelCorrector()
    corr.fit(pack(q), pack(fp), info(3), {"hidden_states": pack(x), "img_ids": ids})
    assert corr.packed_grid == (2, 3)
    torch.testing.assert_close(corr.params[0]["N"].double(), n, rtol=1e-3, atol=1e-4)
    out = corr.apply(pack(q), info(3), {"hidden_states": pack(x)})
    torch.testing.assert_close(out, pack(fp), rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(tmp_path):
    q, x, fp, *_ = planted()
    corr = ChannelCorrector(lambda1=0.01, lambda2=0.02)
    for step in range(3):
        corr.fit(q, fp, info(6, step, 1000.0 - 100 * step), {"hidden_states": x})
    corr.finish(3)
    loaded = load_correction(save_correction(corr, tmp_path / "channel"))
    assert isinstance(loaded, ChannelCorrector) and loaded.config() == corr.config()
    assert loaded.num_steps == 3 and loaded.grid_shape == corr.grid_shape
    for step in range(3):
        for name, t in corr.params[step].items():
            assert torch.equal(loaded.params[step][name], t)
        inf = info(6, step, 1000.0 - 100 * step)
        assert torch.equal(loaded.apply(q.float(), inf, {"hidden_states": x.float()}),
                           corr.apply(q.float(), inf, {"hidden_states": x.float()}))


def test_shape_mismatches_are_named_errors():
    q, x, fp, *_ = planted(c=4)
    corr = ChannelCorrector()
    corr.fit(q, fp, info(6), {"hidden_states": x})
    corr.finish(1)
    wide = torch.randn(2, 8, 5, 3)
    with pytest.raises(CorrectionMismatchError, match="latent grid"):
        corr.apply(wide, info(2), {"hidden_states": wide})
    with pytest.raises(CorrectionMismatchError, match="does not match the prediction"):
        corr.apply(q[:2].float(), info(2), {"hidden_states": torch.randn(2, 4, 3, 5)})
    with pytest.raises(ConfigError, match="reads the denoiser input"):
        corr(q[:2].float(), info(2))  # a bare stepper call: no x_t
    with pytest.raises(ConfigError, match="lambda1"):
        ChannelCorrector(lambda1=-1.0)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_process_affiner_fits_and_installs_on_a_tiny_pipeline(name):
    """Wiring: recurrent fitting with x_t from the tap, ``installed`` and ``step_errors`` hand it the inputs."""
    pytest.importorskip("diffusers")
    from tests.affiner.test_process import STEPS, distorted_copy, held_out_errors, items
    from segquant.affiner import installed, process_affiner
    from segquant.models.tiny_pipelines import TINY_DENOISER, build_tiny_pipeline
    from segquant.pipeline.glue import swapped_denoiser

    pipe = build_tiny_pipeline(name)
    q = distorted_copy(getattr(pipe, TINY_DENOISER[name]), "proj_out")
    cfg = {"method": "channel", "num_inference_steps": STEPS, "guidance_scale": 2.0, "batch_size": 3}
    corr = process_affiner(cfg, items(name, "fit", 6), pipe, q)
    assert sorted(corr.params) == list(range(STEPS)) and "N" in corr.params[0]
    before, after = held_out_errors(name, pipe, q), held_out_errors(name, pipe, q, corr)
    assert all(a < 0.8 * b for a, b in zip(after, before)), (before, after)
    kw = dict(num_inference_steps=STEPS, output_type="latent", guidance_scale=2.0, **items(name, "held out", 1)[0])
    with torch.no_grad(), swapped_denoiser(pipe, q):
        raw = pipe(**kw, generator=torch.Generator().manual_seed(0))[0]
        with installed(pipe, corr):
            fixed = pipe(**kw, generator=torch.Generator().manual_seed(0))[0]
        again = pipe(**kw, generator=torch.Generator().manual_seed(0))[0]
    assert not torch.equal(fixed, raw) and torch.equal(again, raw)  # applied inside, removed after
