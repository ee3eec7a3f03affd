"""Running Hessian of a linear layer's inputs, for GPTQ.

GPTQ (Frantar et al., 2022) minimises ``||X Wᵀ − X Ŵᵀ||²`` row by row; the Hessian of that loss with
respect to a row of ``W`` is ``H = 2 X Xᵀ`` (here with ``X`` as ``(n, K)`` rows: ``H = 2/n · Σ xᵢ xᵢᵀ``,
normalised by the number of samples ``n`` as in the GPTQ reference code). The observer keeps a single
``(K, K)`` float32 running mean, so its memory does not depend on how many samples it has seen.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import as_matrix, check_finite

logger = logging.getLogger(__name__)

_STORAGES = ("device", "cpu")


class HessianObserver:
    """Accumulate ``H = 2/n · Σ x xᵀ`` over every row ``x`` (a token) of the inputs seen.

    Args:
        k: the feature dim ``K`` of the layer input.
        device: where ``x xᵀ`` is computed (e.g. the calibration ``tmp_device``); ``None`` = the device
            of each input.
        storage: ``"device"`` keeps the ``(K, K)`` accumulator on the compute device; ``"cpu"`` keeps it
            in CPU memory (``cpu_storage``) and only moves each batch's ``(K, K)`` product there.
    """

    def __init__(self, k: int, device: torch.device | str | None = None, storage: str = "device") -> None:
        if not isinstance(k, int) or k <= 0:
            raise ConfigError(f"k: {k!r} must be a positive integer (the layer's input features)")
        if storage not in _STORAGES:
            raise ConfigError(f"storage: {storage!r} is not valid; allowed: {', '.join(map(repr, _STORAGES))}")
        self.k = k
        self.device = torch.device(device) if device is not None else None
        self.storage = storage
        self.n_samples = 0
        self._h: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` ``(..., K)`` (any float dtype) to the running Hessian.

        Raises :class:`CalibrationError` on NaN/inf or a wrong feature dim.
        """
        if x.shape[-1] != self.k:
            raise CalibrationError(f"HessianObserver: input has {x.shape[-1]} features, expected {self.k}")
        check_finite(x, "HessianObserver input")
        rows = as_matrix(x)
        m = rows.shape[0]
        if m == 0:
            return
        compute = self.device if self.device is not None else rows.device
        rows = rows.to(device=compute, dtype=torch.float32)
        outer = rows.T @ rows  # (K, K) float32, Σ x xᵀ over this batch
        if self._h is None:
            self._h = torch.zeros(self.k, self.k, dtype=torch.float32, device=self._home(compute))
        total = self.n_samples + m
        # running mean of 2·x xᵀ: H ← H·n/(n+m) + 2/(n+m)·Σ x xᵀ (bounded magnitude, as in GPTQ)
        self._h.mul_(self.n_samples / total).add_(outer.to(self._h.device), alpha=2.0 / total)
        self.n_samples = total

    def _home(self, compute: torch.device) -> torch.device:
        return torch.device("cpu") if self.storage == "cpu" else compute

    def hessian(self) -> Tensor:
        """The accumulated ``(K, K)`` float32 Hessian (a copy; the observer keeps accumulating)."""
        if self._h is None:
            raise CalibrationError("HessianObserver: no samples were observed; the layer never ran during calibration")
        return self._h.clone()

    def reset(self) -> None:
        """Forget every sample (frees the accumulator)."""
        self.n_samples = 0
        self._h = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator (``4·K²`` once a sample was seen, else 0)."""
        return 0 if self._h is None else self._h.numel() * self._h.element_size()

    def __repr__(self) -> str:
        return f"HessianObserver(k={self.k}, n_samples={self.n_samples}, storage={self.storage!r})"
