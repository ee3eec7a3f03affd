"""The GPTQ inverse-Hessian factor without an explicit inverse equals the textbook one."""

from __future__ import annotations

import pytest
import torch

from segquant.algorithms.gptq import _inverse_hessian_cholesky
from segquant.errors import CalibrationError


def _textbook_factor(h: torch.Tensor, percdamp: float) -> torch.Tensor:
    """``cholesky(cholesky_inverse(cholesky(H + damp I)), upper=True)``: the paper's reference code."""
    h = h + percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


@pytest.mark.parametrize("k, samples, seed", [(8, 64, 0), (96, 40, 1), (257, 1000, 2)])
def test_factor_equals_inverse_then_cholesky(k, samples, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, samples, generator=g, dtype=torch.float64) * torch.rand(k, 1, generator=g, dtype=torch.float64)
    h = 2 * x @ x.T / samples
    new, old = _inverse_hessian_cholesky(h, 0.01), _textbook_factor(h, 0.01)
    assert torch.equal(new, new.triu())
    assert float((new - old).norm() / old.norm()) < 1e-6
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(new.T @ new, torch.linalg.inv(damped), rtol=1e-6, atol=1e-9)


def test_factor_float32_close_to_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 512, generator=g, dtype=torch.float64)
    h = x @ x.T / 512
    exact = _textbook_factor(h, 0.01)
    new = _inverse_hessian_cholesky(h.float(), 0.01)
    assert new.dtype == torch.float32
    assert float((new.double() - exact).norm() / exact.norm()) < 1e-5


def test_indefinite_hessian_raises():
    h = torch.diag(torch.tensor([1.0, -5.0, 1.0]))
    with pytest.raises(CalibrationError, match="not positive definite"):
        _inverse_hessian_cholesky(h, 0.0)
