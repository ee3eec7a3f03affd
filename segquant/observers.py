"""Running statistics of a linear layer's input, collected during calibration.

Memory does not grow with the number of calibration samples: per-channel signed min/max, an
optional Hessian accumulator (GPTQ) and an optional bounded reservoir of input rows (alpha search,
percentile/MSE clipping) whose size is fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.numerics import as_matrix, check_finite


class InputObserver:
    """Statistics of the inputs ``x`` ``(..., K)`` of one linear layer.

    Attributes (float32, on ``device``): ``min`` / ``max`` ``(K,)`` signed per-channel extrema,
    ``rows_seen`` (int), ``sample`` ``(<= max_sample_rows, K)`` a uniform reservoir sample of rows
    (only when ``max_sample_rows > 0``), and a Hessian observer when ``hessian=True``.
    """

    def __init__(self, name: str, k: int, device: torch.device | str = "cpu", hessian: bool = False,
                 hessian_device: torch.device | str | None = None, max_sample_rows: int = 0, seed: int = 0):
        self.name, self.k, self.device = name, k, torch.device(device)
        self.min = torch.full((k,), float("inf"), device=self.device)
        self.max = torch.full((k,), float("-inf"), device=self.device)
        self.rows_seen = 0
        self.max_sample_rows = max_sample_rows
        self.sample: Tensor | None = None
        self._keys: Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self.hessian = None
        if hessian:
            from segquant.algorithms.hessian import HessianObserver

            self.hessian = HessianObserver(k, device=hessian_device or self.device)

    def update(self, x: Tensor) -> None:
        """Fold a batch of inputs ``x`` ``(..., K)`` (any float dtype) into the statistics."""
        m = as_matrix(x.detach()).to(self.device, torch.float32)
        if m.shape[-1] != self.k:
            raise ValueError(f"{self.name}: input has {m.shape[-1]} features, expected {self.k}")
        check_finite(m, f"input of layer {self.name!r}")
        self.min = torch.minimum(self.min, m.amin(dim=0))
        self.max = torch.maximum(self.max, m.amax(dim=0))
        if self.hessian is not None:
            self.hessian.update(m)
        if self.max_sample_rows:
            self._update_reservoir(m)
        self.rows_seen += m.shape[0]

    def _update_reservoir(self, m: Tensor) -> None:
        """Keep a uniform sample of at most ``max_sample_rows`` rows of everything seen.

        Bottom-k sampling: every row gets a uniform random key; the rows with the k smallest keys
        are a uniform sample without replacement.
        """
        keys = torch.rand(m.shape[0], generator=self._generator).to(self.device)
        rows = m if self.sample is None else torch.cat([self.sample, m])
        all_keys = keys if self.sample is None else torch.cat([self._keys, keys])
        if rows.shape[0] > self.max_sample_rows:
            keep = all_keys.topk(self.max_sample_rows, largest=False).indices
            rows, all_keys = rows[keep], all_keys[keep]
        self.sample, self._keys = rows, all_keys

    @property
    def absmax(self) -> Tensor:
        """Per-channel ``max |x|`` ``(K,)`` float32."""
        self._require_data()
        return torch.maximum(self.max.abs(), self.min.abs())

    def _require_data(self) -> None:
        if self.rows_seen == 0:
            from segquant.errors import CalibrationError

            raise CalibrationError(f"layer {self.name!r} saw no calibration input; is it used in forward?")
