"""SVD low-rank branch: exact on low-rank weights, reduces W4A8 error on weights with a strong low-rank part."""

from __future__ import annotations

import pytest
import torch

from segquant.algorithms.svd import lowrank_branch, lowrank_residual
from segquant.enums import DType
from segquant.errors import ConfigError
from segquant.numerics import PerChannel, PerTensor, dynamic_fake_quant


def test_exact_when_rank_at_most_r():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(40, 5, generator=gen) @ torch.randn(5, 30, generator=gen)  # rank 5
    for r in (5, 8):
        up, down = lowrank_branch(w, r)
        assert up.shape == (40, r) and down.shape == (r, 30)
        assert up.dtype == down.dtype == torch.float32
        assert lowrank_residual(w, up, down).abs().max() < 1e-4 * w.abs().max()
    up, down = lowrank_branch(w, 4)  # one rank short: not exact
    assert lowrank_residual(w, up, down).abs().max() > 1e-2 * w.abs().max()


def test_best_rank_r_approximation_and_balanced_factors():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    w0 = w.clone()
    up, down = lowrank_branch(w, 3, compute_dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    # Eckart–Young: the residual's Frobenius norm is the tail of the singular values
    assert torch.isclose(lowrank_residual(w, up, down).double().norm(), s[3:].norm(), rtol=1e-5)
    assert torch.allclose(up.double().norm(dim=0), down.double().norm(dim=1), rtol=1e-5)  # √S on both sides
    assert torch.equal(w, w0)


def test_rank_zero_and_rank_clamped():
    w = torch.randn(6, 4)
    up, down = lowrank_branch(w, 0)
    assert up.shape == (6, 0) and down.shape == (0, 4)
    assert torch.equal(lowrank_residual(w, up, down), w)
    up, down = lowrank_branch(w, 32)  # larger than min(N, K) = 4
    assert up.shape == (6, 4)
    assert lowrank_residual(w, up, down).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="low_rank"):
        lowrank_branch(w, -1)


def test_branch_reduces_w4a8_error_on_low_rank_plus_noise_weight():
    gen = torch.Generator().manual_seed(2)
    n, k, r = 64, 128, 8
    strong = torch.randn(n, r, generator=gen) @ torch.randn(r, k, generator=gen) * 2.0
    w = strong + 0.1 * torch.randn(n, k, generator=gen)
    w[:, 5] *= 20.0  # an outlier column, as smoothing leaves behind
    x = torch.randn(256, k, generator=gen)
    ref = x @ w.T

    def w4a8(weight_part):
        w_hat = dynamic_fake_quant(weight_part, DType.INT4, PerChannel())
        x_hat = dynamic_fake_quant(x, DType.INT8, PerTensor())
        return x_hat @ w_hat.T

    err_plain = (w4a8(w) - ref).norm()
    up, down = lowrank_branch(w, r)
    branch = (x @ down.half().float().T) @ up.half().float().T  # the 16-bit branch, as SegLinear runs it
    with_branch = w4a8(lowrank_residual(w, up, down)) + branch
    err_branch = (with_branch - ref).norm()
    assert err_branch < 0.5 * err_plain, (err_branch, err_plain)
