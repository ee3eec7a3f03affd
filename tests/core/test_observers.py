"""HessianObserver: 2/n Σ x xᵀ, batch-order independent, bounded memory, clean errors."""

from __future__ import annotations

import pytest
import torch

from segquant.observers import HessianObserver
from segquant.errors import CalibrationError, ConfigError


def test_matches_closed_form_over_uneven_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 70, 24, generator=gen, dtype=torch.float64)
    obs = HessianObserver(24)
    obs.update(x[0, :5].float())
    obs.update(x[0, 5:].float())
    obs.update(x[1:].half())  # (2, 70, 24): leading dims are tokens; fp16 input accepted
    flat = torch.cat([x[0], x[1:].half().double().reshape(-1, 24)])
    expected = 2.0 / flat.shape[0] * flat.T @ flat
    h = obs.hessian()
    assert h.dtype == torch.float32 and h.shape == (24, 24)
    assert obs.n_samples == 210
    assert torch.allclose(h.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(h, h.T)


def test_memory_independent_of_samples_and_copy_semantics():
    obs = HessianObserver(16)
    obs.update(torch.randn(10, 16))
    size = obs.nbytes
    for _ in range(20):
        obs.update(torch.randn(50, 16))
    assert obs.nbytes == size == 16 * 16 * 4
    h = obs.hessian()
    h.zero_()
    assert obs.hessian().abs().sum() > 0  # hessian() returns a copy


def test_cpu_storage_and_explicit_device():
    x = torch.randn(40, 8)
    a = HessianObserver(8, storage="cpu")
    b = HessianObserver(8, device="cpu", storage="device")
    a.update(x)
    b.update(x)
    assert a.hessian().device.type == "cpu"
    assert torch.equal(a.hessian(), b.hessian())


def test_errors_and_reset():
    obs = HessianObserver(8)
    with pytest.raises(CalibrationError, match="no samples"):
        obs.hessian()
    with pytest.raises(CalibrationError, match="expected 8"):
        obs.update(torch.randn(4, 9))
    bad = torch.randn(4, 8)
    bad[1, 2] = float("inf")
    with pytest.raises(CalibrationError, match="inf"):
        obs.update(bad)
    bad[1, 2] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        obs.update(bad)
    assert obs.n_samples == 0  # rejected batches leave no trace
    obs.update(torch.randn(4, 8))
    obs.reset()
    assert obs.n_samples == 0 and obs.nbytes == 0
    with pytest.raises(ConfigError, match="storage"):
        HessianObserver(8, storage="disk")
    with pytest.raises(ConfigError, match="k"):
        HessianObserver(0)


def test_cpu_storage_only_stores_on_the_cpu():
    """``calib.cpu_storage``: x xᵀ is computed where the inputs are (the calibration device); only the
    (K, K) accumulator lives in CPU memory."""
    from segquant.calibration import make_observer
    from segquant.config import QuantConfig
    from segquant.plan import LayerPlan

    config = QuantConfig.from_dict({"default": {"calib": {"type": "gptq", "cpu_storage": True}}}).for_layer("fc")
    observer = make_observer(LayerPlan("fc", 8, 4, True, config), torch.device("cpu"))
    assert observer.hessian.device is None  # compute on each input's device
    assert observer.hessian.storage == "cpu"
    observer.update(torch.randn(5, 8))
    assert observer.hessian.hessian().device.type == "cpu"
